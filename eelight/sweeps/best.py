"""The best trial of a study: which one it is, and its export (`eelight export --study`),
optionally registered in MLflow's model registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eelight.sweeps.config import SweepConfig
from eelight.sweeps.storage import sweep_tracking


def best_trial(sweep: SweepConfig):
    """The study's best complete trial (Optuna's FrozenTrial); raises if none completed."""
    import optuna

    from eelight.sweeps.storage import make_storage

    study = optuna.load_study(study_name=sweep.name, storage=make_storage(sweep))
    return study.best_trial


def best_trial_export(sweep: SweepConfig, out: str | Path, register_as: str | None = None,
                      fmt: str = "eelight") -> dict[str, Any]:
    """Export the study's best trial (and optionally register it in the model registry)."""
    best = best_trial(sweep)
    ckpt = Path(best.user_attrs["checkpoint"])
    card = {"title": f"{sweep.name} trial {best.number}", "metrics": {sweep.objective.metric: best.value,
            **{k: v for k, v in best.user_attrs.get("metrics", {}).items()}},
            "stages": " -> ".join(sweep.stages), "source": f"sweep {sweep.name}, params {json.dumps(best.params)}"}
    from eelight.export import export_model

    folder = export_model(ckpt.parent / "config.yaml", ckpt, out, card, fmt)
    result: dict[str, Any] = {"trial": best.number, "value": best.value, "folder": str(folder)}
    if register_as:
        from eelight.mlflow_pyfunc import register_model

        uri = sweep_tracking(sweep).uri
        version = register_model(folder, register_as, uri, best.user_attrs["mlflow_run_id"])
        result["registered"] = {"name": register_as, "version": version.version}
    return result
