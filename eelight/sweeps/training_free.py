"""Training-free variants in a sweep (`training_free:` in a sweep file): after a trial of the
grid value `apply_to` finishes (e.g. LLaVA), each variant (FastV, ShortV, EE-MLLM-F) is scored on
its checkpoint by the same evaluator as the trial's objective, and costed at its own forward
FLOPs per sample. ShortV's layers are calibrated on the trial's run first (`eelight shortv`).
The results are the trial's `training_free` attribute (the report makes each a row of its own,
paired by seed) and `training_free/<label>/<metric>` metrics on the trial's MLflow run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from eelight.sweeps.config import SweepConfig


def applies(sweep: SweepConfig, point: dict[str, Any]) -> bool:
    key, _, value = sweep.training_free.apply_to.partition("=")
    return bool(sweep.training_free.variants) and key in point and str(point[key]) == value


def label(variant: str) -> str:
    """A name MLflow accepts in a metric key: each override's preset name, or key_value, joined by -
    ("model_preset=fastv model.prune_after=1" -> fastv-prune_after_1)."""
    return "-".join(o.split("=", 1)[1] if o.startswith("model_preset=") else o.removeprefix("model.").replace("=", "_")
                    for o in variant.split())


def score(sweep: SweepConfig, final_cfg: Any, checkpoint: str) -> dict[str, dict[str, Any]]:
    """{variant: {value, metrics, flops_per_sample, visual_tokens}} on the trial's final checkpoint."""
    from eelight.eval.cost import forward_cost
    from eelight.evaluate.command import evaluate_target, write_outputs
    from eelight.evaluate.shortv import calibrate
    from eelight.evaluate.target import load_target
    from eelight.models.overrides import apply_model_overrides

    run_dir = Path(checkpoint).parent
    out: dict[str, dict[str, Any]] = {}
    for variant in sweep.training_free.variants:
        overrides = variant.split()  # e.g. "model_preset=fastv model.prune_after=1"
        model = apply_model_overrides(final_cfg.model, [o.removeprefix("model.") for o in overrides])
        if model.kv_only_layers == "auto":  # ShortV: its layers chosen on this trial's own run
            model = replace(model, kv_only_layers=calibrate(run_dir)["kv_only_layers"])
        results = evaluate_target(load_target(str(run_dir), overrides))
        write_outputs(results, run_dir / "eval" / label(variant))
        metrics = {k: v for r in results for k, v in r.metrics.items()}
        flops, n_visual = forward_cost(model, final_cfg.data.max_length)
        out[variant] = {"value": metrics[sweep.objective.metric], "metrics": metrics, "flops_per_sample": flops,
                        "visual_tokens": n_visual}
    return out


def mlflow_metrics(sweep: SweepConfig, scored: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {f"training_free/{label(v)}/{sweep.objective.metric}": s["value"] for v, s in scored.items()}
