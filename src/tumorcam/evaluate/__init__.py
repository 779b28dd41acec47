"""Evaluation stages, one module each: `segmentation` (Dice/IoU -> metrics.json), `faithfulness`
(Deletion/Insertion), `localization`, `sanity`. Import the module you need; nothing is imported here."""
