"""What a run keeps and what its rerun does when it goes wrong (issue 28, must-show 4): a failed
first attempt does not block its name, a full disk at a checkpoint keeps the last good one and
leaves no partial file, and SIGTERM / SIGINT save the step, mark the MLflow run KILLED and exit
with 128 + signal; each rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # real eelight processes, a few seconds of training each
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}


def _cmd(probe_env, out: Path, name: str, *extra: str) -> list[str]:
    overrides = [o for o in probe_env["overrides"] if not o.startswith("out_dir")]
    return [sys.executable, "-m", "eelight.cli", "train", "experiments/ee_mllm_tiny.yaml", *overrides,
            f"out_dir={out}", f"name={name}", "data.val_shards=null", *extra]


def _runs(probe_env, name: str) -> list:
    import mlflow

    uri = next(o.split("=", 1)[1] for o in probe_env["overrides"] if o.startswith("mlflow.tracking_uri="))
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("eelight")
    return client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{name}/align'",
                              order_by=["attributes.start_time ASC"])


def _step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


def test_a_run_that_failed_before_its_first_checkpoint_can_be_rerun(probe_env, tmp_path):
    bad = tmp_path / "bad-000000.tar"
    bad.write_bytes(bytes(range(256)) * 20)
    first = subprocess.run(_cmd(probe_env, tmp_path, "retry", f"data.train_shards={bad}", "trainer.max_steps=2"),
                           capture_output=True, text=True, env=ENV, timeout=300)
    assert first.returncode == 2 and "can be read as a tar" in first.stderr.splitlines()[-1]
    second = subprocess.run(_cmd(probe_env, tmp_path, "retry", "trainer.max_steps=2"),
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "stopped before its first checkpoint: starting over in a new MLflow run" in second.stderr
    runs = _runs(probe_env, "retry")
    assert [r.info.status for r in runs] == ["FAILED", "FINISHED"]
    assert runs[0].data.params["data.train_shards"] == str(bad)  # the failed attempt's params stay
    assert runs[1].data.params["data.train_shards"] != str(bad)
    assert _step(tmp_path / "retry" / "align" / "last.ckpt") == 2


@pytest.fixture
def small_fs(tmp_path):
    """A 1.5 MB tmpfs: room for one checkpoint of the tiny model (0.9 MB), not for its next one
    beside it. Skipped where mounting is not permitted."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_at_a_checkpoint_keeps_the_last_good_one(probe_env, small_fs):
    cmd = _cmd(probe_env, small_fs, "full", "trainer.max_steps=4", "trainer.ckpt_every_n_steps=2")
    full = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    last_line = full.stderr.strip().splitlines()[-1]
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-3000:]
    run_dir = small_fs / "full" / "align"
    assert f"cannot write checkpoint {run_dir / 'last.ckpt'}" in last_line and "needs about" in last_line
    assert _step(run_dir / "last.ckpt") == 2  # the step-2 checkpoint, whole
    assert not list(run_dir.glob("*.tmp")) and not list(small_fs.rglob("*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_fs)], check=True)  # space freed
    again = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["resumed_from_step"] == 2 and result["global_step"] == 4


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_marks_the_run_killed_and_the_rerun_resumes(probe_env, tmp_path, sig):
    name = f"signal_{sig.name.lower()}"
    cmd = _cmd(probe_env, tmp_path, name, "trainer.max_steps=100000", "trainer.progress_every_s=0.5")
    err_file = tmp_path / "stderr.txt"
    with open(err_file, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=ENV)
        deadline = time.monotonic() + 240
        while "step " not in err_file.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
    lines = err_file.read_text().strip().splitlines()
    assert code == 128 + sig, lines[-5:]
    assert lines[-1].startswith(f"eelight: error: stopped by {sig.name} at step ") and "Traceback" not in "".join(lines)
    step = int(lines[-1].split(" at step ")[1].split(";")[0])
    run_dir = tmp_path / name / "align"
    assert step >= 1 and _step(run_dir / "last.ckpt") == step
    killed = _runs(probe_env, name)[-1]
    assert killed.info.status == "KILLED" and killed.data.tags["stopped_by"] == sig.name
    rerun = subprocess.run([*cmd[:-2], f"trainer.max_steps={step + 2}"], capture_output=True, text=True, env=ENV,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["resumed_from_step"] == step and result["global_step"] == step + 2
