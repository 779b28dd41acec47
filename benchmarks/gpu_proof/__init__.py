"""One prepared GPU proof: every GPU figure of the project, measured in one time-boxed run.

`benchmarks/gpu_proof.sh` installs what `python benchmarks/gpu_proof wheels` names and calls
`python benchmarks/gpu_proof run` (`__main__`), which writes OUT/gpu_proof.json and
OUT/paper_run_jsons.tar.gz (the paper run's JSON files and the log of every step). The sections, in
the order they run (the most valuable first), one module each:

1. `environment`: GPU, driver, torch, CUDA and library versions, date, what was installed.
2. `paper_run` (its slices from `slices`): `tumorcam data prepare` of the real slices, `tumorcam train
   --preset paper --encoder-weights none` for as many epochs as the training budget allows (at most
   the preset's), `tumorcam explain RUN --split val` and `tumorcam evaluate RUN --segmentation
   --faithfulness --localization --sanity --split val`, all through the CLI with the package's defaults.
3. `bf16_agreement`: on that trained model, per method, target and layer: Spearman and max |diff| of
   the bf16 and fp32 maps of each slice, and the difference of the deletion/insertion AUCs.
4. `training`, 5. `explain`, 6. `faithfulness`: the seed's way against tumorcam's
   (benchmarks/bench_*.py), 7. `nnunet`: a small nnU-Net v2 model planned and trained on the spot,
   its Grad-CAM per case, its stitched forward against nnUNetPredictor and one `run_nnunet` (skipped
   where nnunetv2 is not installed, and in smoke runs), then 8. torch.compile'd training (`training`
   again), last because its compile time is the least predictable.

Time-boxing (`driver`, with the helpers of `timebox`): one deadline for the whole run (the shell
script's start + --budget-s, install included). Each step runs in a forked child (the parent imports
the libraries once and never touches CUDA) under timeout = min(the step's cap, time left - the time
reserved for the steps after it); a step with less than its minimum is skipped, a child past its
timeout is killed with its process group. Steps record results as they go, so a killed step keeps
what it finished; `skipped` lists every step or part not done and why. gpu_proof.json is rewritten
after every step; `summary` prints its headline figures at the end. `wheels` picks the wheels to install.
"""
