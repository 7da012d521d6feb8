"""A sweep whose trials train on 2 processes (DDP) with the median pruner: each multi-device
stage runs as a child `eelight train`, its rank 0 reports to the trial, and a pruned trial stops
on every rank (issue 14, must-show 3)."""

import json
import os
import subprocess
import sys

import mlflow
import optuna
import pytest

pytestmark = pytest.mark.slow

SWEEP = """
name: ddp_prune
experiment: [experiments/ee_mllm_tiny.yaml]
stages: [align]
overrides: [trainer.devices=2, trainer.strategy=ddp, data.resampled=true, data.epoch_batches=4,
            trainer.val_every_n_steps=2, trainer.max_steps=6, trainer.ckpt_every_n_steps=1000,
            data.batch_size=8, data.val_samples=16, optim.warmup_steps=1, trainer.log_every_n_steps=1]
space:
  optim.projector_lr: {type: grid, values: [0.01, 0.0]}
trials_per_point: 2
seeds: [0]
pruner: median
objective: {metric: val/loss, direction: minimize}
"""


def test_ddp_trials_complete_and_the_pruner_stops_both_ranks(probe_env, tmp_path):
    sweep = tmp_path / "ddp_prune.yaml"
    sweep.write_text(SWEEP)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [o for o in probe_env["overrides"] if not o.startswith(("out_dir", "mlflow.tracking_uri", "data.batch_size"))]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run([sys.executable, "-m", "eelight.cli", "sweep", "--out-dir", str(tmp_path), str(sweep),
                           *overrides, f"mlflow.tracking_uri={store}"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    study = optuna.load_study(study_name="ddp_prune", storage=f"sqlite:///{tmp_path}/ddp_prune/study.db")
    trials = sorted(study.trials, key=lambda t: t.number)
    # Trials run in grid order: two that learn (the pruner's startup trials), then two that cannot
    # (projector_lr 0), whose report is worse than the median: pruned there, before the end.
    assert [t.params["optim.projector_lr"] for t in trials] == [0.01, 0.01, 0.0, 0.0]
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    for t in trials[:2]:
        assert t.user_attrs["train_samples"] == 6 * 8 * 2  # 6 steps x batch 8 x 2 ranks
        assert sorted(t.intermediate_values) == [2, 4, 6]
    for t in trials[2:]:
        last = max(t.intermediate_values)
        assert last < 6  # stopped at the report the pruner rejected, on both ranks (no hang, no step more)
        run_dir = tmp_path / "ddp_prune" / "runs" / f"trial_{t.number:04d}" / "align"
        result = json.loads((run_dir / "result.json").read_text())
        assert result["world_size"] == 2 and result["global_step"] == last
        assert result["stop_reason"].startswith(f"pruned at step {last}: val/loss=")
        assert (run_dir / "stage.yaml").is_file()  # the stage ran as its own `eelight train`

    client = mlflow.MlflowClient(store)
    status = {int(r.data.tags["optuna.trial"]): r.info.status for r in client.search_runs(
        [client.get_experiment_by_name("ddp_prune").experiment_id], "tags.sweep = 'ddp_prune'")
        if "optuna.trial" in r.data.tags}
    assert status == {0: "FINISHED", 1: "FINISHED", 2: "KILLED", 3: "KILLED"}
    # rank 0 of each stage process logged into the trial's own run
    run = client.get_run(trials[0].user_attrs["mlflow_run_id"])
    assert "align-train/loss" in run.data.metrics
