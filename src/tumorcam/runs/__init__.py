"""The run layer: a run folder, its settings, stages, and the loops that feed the engine's measures."""
