"""Runs on 3-D volumes: explain and evaluate a segmentation network case by case, without training it
(`run.run_volumes`), the demo's small 3-D U-Net (`train`), the settings (`settings`), what is measured
on one case (`cases`) and the run's report (`report`)."""
