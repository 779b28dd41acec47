"""Evaluation stages, one module each: `segmentation` (Dice/IoU of `metrics` -> metrics.json),
`faithfulness` (Deletion/Insertion, played by `game` over the pixel order of `ranking` and the
perturbations of `baselines`), `localization`, `sanity`; `stats` and `summary` make the
patient-level verdicts. Import the module you need; nothing is imported here."""
