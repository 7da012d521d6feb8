"""One sweep trial: its stages in order (instruct starts from align), logged into one nested
MLflow run, pruned through an Optuna pruner fed by the validation metric."""

from __future__ import annotations

import time
import traceback
from dataclasses import replace
from typing import Any

from eelight.sweeps import training_free
from eelight.sweeps.config import SweepConfig, point_overrides
from eelight.training.config import flat_params


def suggest_overrides(trial, sweep: SweepConfig) -> list[str]:
    """Grid params come back as enqueued; the others are sampled. Returns overrides."""
    out = []
    for key, d in sweep.space.items():
        if d.type in ("grid", "categorical"):
            trial.suggest_categorical(key, list(d.values))
        elif d.type == "int":
            trial.suggest_int(key, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
        else:
            trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)
        if d.type != "grid":
            out.append(f"{key}={trial.params[key]}")
    trial.suggest_categorical("seed", list(sweep.seeds))
    trial.suggest_categorical("data_size", list(sweep.data_sizes) if sweep.data_sizes else [None])
    return out


def trial_label(point: dict[str, Any], number: int) -> str:
    """What differs, as the MLflow run's name: `aligner=fresh seed=1 n=500` (`model.` and
    `model_preset=` left out: `llava seed=0`), then the trial number."""
    parts = []
    for key, value in point.items():
        if key in ("seed", "data_size", "repeat"):
            continue
        parts.append(str(value) if key == "model_preset" else f"{key.removeprefix('model.')}={value}")
    parts.append(f"seed={point.get('seed')}")
    if point.get("data_size") is not None:
        parts.append(f"n={point['data_size']}")
    if point.get("repeat"):
        parts.append(f"repeat={point['repeat']}")
    return " ".join(parts) + f" (#{number})"


def train_stage(cfg, trial, sweep: SweepConfig, prune: bool) -> dict[str, Any]:
    """One stage of a trial: in this process on one device; on several, in a child process
    (`sweeps/stage_process.py`). `prune`: the objective is reported to the trial's pruner."""
    from eelight.sweeps.pruning import OptunaPruning, trial_spec
    from eelight.sweeps.stage_process import run_stage_process
    from eelight.sweeps.storage import storage_url
    from eelight.training.distributed import world_size
    from eelight.training.run import train

    if world_size(cfg.trainer) > 1:
        spec = trial_spec(storage_url(sweep), sweep.name, trial._trial_id, sweep.objective.metric,
                          sweep.pruner) if prune else None
        return run_stage_process(cfg, spec)
    return train(cfg, [OptunaPruning(trial, sweep.objective.metric)] if prune else [])


def run_trial(study, trial, sweep: SweepConfig, parent_run_id: str):
    """Returns (TrialState, objective value or None); never raises for a failed trial."""
    import optuna
    from optuna.trial import TrialState

    from eelight.eval.cost import forward_cost
    from eelight.models.hf_loading import resolve

    point = trial.user_attrs["point"]
    values = point_overrides(point) + suggest_overrides(trial, sweep)  # the grid point's and the sampled
    where = [f"out_dir={sweep.out_dir}/{sweep.name}/runs", f"name=trial_{trial.number:04d}",
             f"mlflow.experiment={sweep.name}"]
    last = sweep.stages[-1]
    final_cfg = sweep.stage_config(last, values, where)
    model = resolve(final_cfg.model)  # its folders read once: the params' sizes and the trial's cost
    tracking, run_id = _start_trial_run(trial, sweep, replace(final_cfg, model=model.cfg), parent_run_id)
    try:
        init_from, result, samples, start = None, {}, 0, time.perf_counter()
        for stage in sweep.stages:
            cfg = sweep.stage_config(stage, values, [*where, f"mlflow.run_id={run_id}", f"mlflow.prefix={stage}",
                                                      *([f"init_from={init_from}"] if init_from else [])])
            result = train_stage(cfg, trial, sweep, prune=stage == last)
            if result.get("stop_reason"):
                raise optuna.TrialPruned(result["stop_reason"])
            init_from = result["checkpoint"]
            samples += result["samples_trained"]  # counted, not steps x batch: a pass's last batch is partial
        if sweep.objective.metric not in result["metrics"]:
            raise KeyError(f"objective metric {sweep.objective.metric!r} was not logged; "
                           f"validation logged {sorted(result['metrics'])}")
        value = result["metrics"][sweep.objective.metric]
        flops, n_visual = forward_cost(model, final_cfg.data.max_length)
        # Training compute, deterministic: forward FLOPs per sample x 3 (forward + backward) x
        # the samples the stages trained on (frozen parts' backward is counted too: an upper bound).
        attrs = {"checkpoint": init_from, "samples_per_s": result.get("samples_per_s"), "flops_per_sample": flops,
                 "visual_tokens": n_visual, "metrics": result["metrics"], "train_samples": samples,
                 "train_flops": 3 * flops * samples, "train_seconds": time.perf_counter() - start,
                 "trainable_params": result.get("trainable_params")}  # in the last stage (the recipe's)
        if training_free.applies(sweep, point):  # FastV, ShortV, ... on this trial's weights
            attrs["training_free"] = training_free.score(sweep, final_cfg, init_from)
            tracking.log_metrics(run_id, training_free.mlflow_metrics(sweep, attrs["training_free"]))
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        tracking.log_metrics(run_id, {"objective": value, "cost/flops_per_sample": flops,
                                      **({"params/trainable": attrs["trainable_params"]} if attrs["trainable_params"] else {})})
        tracking.end_trial_run(run_id, "COMPLETE", checkpoint=init_from)
        return TrialState.COMPLETE, value
    except optuna.TrialPruned as exn:
        tracking.end_trial_run(run_id, "PRUNED", **{"optuna.pruned": str(exn)})
        return TrialState.PRUNED, None
    except Exception as exn:  # a failed trial is recorded; the sweep goes on
        trial.set_user_attr("error", f"{type(exn).__name__}: {exn}"[:2000])
        tracking.end_trial_run(run_id, "FAIL", error=traceback.format_exc()[-4000:])
        return TrialState.FAIL, None


def _start_trial_run(trial, sweep: SweepConfig, resolved, parent_run_id: str):
    """The trial's MLflow run, nested under the study's: named by what differs, tagged with its
    run folder and grid point, the resolved config (sizes as trained) as its params, and a NaN
    objective until the trial has a value (logged first: MLflow's compare view puts the first
    metric on its axis)."""
    from eelight.sweeps.storage import sweep_tracking

    tracking = sweep_tracking(sweep)
    run_id = tracking.start_run(sweep.name, trial_label(trial.user_attrs["point"], trial.number), tags={
        "run_dir": f"{resolved.out_dir}/{resolved.name}", "sweep": sweep.name,
        "optuna.trial": str(trial.number), "grid_point": trial.user_attrs["grid_point"]}, parent=parent_run_id)
    trial.set_user_attr("mlflow_run_id", run_id)
    # The trial's values are config keys already; `name` (its run folder) is the run_dir tag.
    tracking.log_params(run_id, {k: v for k, v in flat_params(resolved).items() if k != "name"})
    tracking.log_metrics(run_id, {"objective": float("nan")})
    return tracking, run_id
