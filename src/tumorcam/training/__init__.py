"""The parts of `tumorcam.train`: device, on-device data and augmentation, loss, step, state, DDP."""
