"""Pruning a trial from inside its training, on one process or on several (DDP / FSDP).

Global rank 0 reports the objective to the trial after each validation and asks the pruner;
its decision is broadcast, and every rank stops training together (a rank that raised alone
would leave the others waiting in a collective). The reason is kept as `stop_reason`, which
`training.run.train` returns; the trial turns it into `optuna.TrialPruned`.

A trial stage on several devices runs as its own `eelight train` process
(`sweeps/stage_process.py`); it finds its trial through the `EELIGHT_TRIAL` variable.
"""

from __future__ import annotations

import json
import os

import lightning as L

from eelight.training.callbacks import StoppingCallback

TRIAL_ENV = "EELIGHT_TRIAL"  # JSON: storage URL, study name, trial id, objective metric, pruner


class OptunaPruning(StoppingCallback):
    """Reports the objective after each validation and stops a trial the pruner rejects."""

    def __init__(self, trial, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if value is None or trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero:
            self.trial.report(float(value), step=trainer.global_step)
            prune = self.trial.should_prune()
        if trainer.world_size > 1:
            prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            self.stop_reason = f"pruned at step {trainer.global_step}: {self.metric}={float(value):.4f}"
            trainer.should_stop = True


def trial_spec(storage: str, study: str, trial_id: int, metric: str, pruner: str) -> str:
    return json.dumps({"storage": storage, "study": study, "trial_id": trial_id, "metric": metric,
                       "pruner": pruner})


def pruning_from_env() -> list[L.Callback]:
    """The pruning callback of the trial this process trains for (`EELIGHT_TRIAL`), or none."""
    spec = os.environ.get(TRIAL_ENV)
    if not spec:
        return []
    import optuna
    from optuna.trial import Trial

    from eelight.sweeps.storage import make_pruner, open_storage

    s = json.loads(spec)
    study = optuna.load_study(study_name=s["study"], storage=open_storage(s["storage"]),
                              pruner=make_pruner(s["pruner"]))
    return [OptunaPruning(Trial(study, int(s["trial_id"])), s["metric"])]
