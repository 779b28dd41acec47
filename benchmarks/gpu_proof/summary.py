"""The headline figures of a proof report, printed at the end of the run."""

from __future__ import annotations

from typing import Any


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The headline figures of a report, one line each.

    Args:
        report: the content of gpu_proof.json.

    Returns:
        One line per section and one for what was skipped ("-" where not measured).
    """

    def get(*keys: str) -> Any:
        value: Any = report
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return "-" if value is None else value

    per_class = get("paper_run", "val_dice", "per_class")
    classes = ", ".join(f"{k} {v.get('mean')}" for k, v in per_class.items()) if isinstance(per_class, dict) else "-"
    maps = get("explain", "tumorcam")
    rates = ", ".join(f"{k.removeprefix('gradcam_')} {v['maps_per_s']}" for k, v in maps.items()) if isinstance(maps, dict) else "-"
    skipped = "; ".join(f"{s['stage']} ({s['reason'][:80]})" for s in report["skipped"]) or "nothing"
    return [
        (f"device: {get('environment', 'gpu', 'name')} ({get('environment', 'device')}), torch "
         f"{get('environment', 'versions', 'torch')}, bf16 matmul {get('environment', 'bf16_matmul_tflops')} TFLOP/s"),
        (f"paper_run: {get('paper_run', 'train', 'epochs')} epochs, {get('paper_run', 'train', 's_per_epoch')} s/epoch, "
         f"val Dice {get('paper_run', 'val_dice', 'overall', 'mean')} ({classes})"),
        (f"bf16_agreement: {get('bf16_agreement', 'summary', 'agree')} of {get('bf16_agreement', 'summary', 'rows')} "
         f"rows agree, worst mean Spearman {get('bf16_agreement', 'summary', 'worst_spearman')}"),
        (f"training img/s: seed {get('training', 'seed_style', 'img_per_s')}, eager "
         f"{get('training', 'tumorcam', 'img_per_s')}, compiled {get('training', 'tumorcam_compiled', 'img_per_s')}, "
         f"speedup {get('training', 'speedup')}"),
        f"Grad-CAM maps/s: seed {get('explain', 'seed_loop', 'maps_per_s')}; {rates}",
        (f"Deletion/Insertion: {get('faithfulness', 'tumorcam', 'slices_per_s')} slices/s, "
         f"{get('faithfulness', 'fraction_of_inference_bound')} of the bf16 bound, "
         f"{get('faithfulness', 'seconds_per_664_slices')} s per 664 slices"),
        (f"nnU-Net: Grad-CAM {get('nnunet', 'explain', 'seconds_per_case')} s/case, segmentation agrees with "
         f"nnUNetPredictor on {get('nnunet', 'agreement', 'summary', 'min_raw_agreement')} of voxels (min), run_nnunet "
         f"{get('nnunet', 'run', 'seconds')} s ({get('nnunet', 'run', 'headline_level')}; deletion/insertion gradcam "
         f"{get('nnunet', 'run', 'auc_means', 'gradcam', 'deletion')}/{get('nnunet', 'run', 'auc_means', 'gradcam', 'insertion')}"
         f", random {get('nnunet', 'run', 'auc_means', 'random', 'deletion')}/"
         f"{get('nnunet', 'run', 'auc_means', 'random', 'insertion')}), nnunetv2-cam "
         f"{get('nnunet', 'nnunetv2_cam', 'explain_s')} s/case"),
        f"skipped: {skipped}",
    ]
