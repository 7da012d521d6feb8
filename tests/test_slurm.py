"""`sbatch slurm/train.sbatch` on a real single-node SLURM: a 2-task DDP job through
Lightning's SLURMEnvironment, USR1 -> requeue -> resume from the HPC checkpoint, and
`slurm/sweep.sbatch` job arrays (a shared PostgreSQL study, a cancelled task, DDP trials)."""

import json
import os
import time
from pathlib import Path

import pytest
import slurm_cluster

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not slurm_cluster.available():
        if os.environ.get("CI"):
            pytest.fail("SLURM is not installed: .ci/run installs slurmctld slurmd slurm-client munge")
        pytest.skip("SLURM not installed (apt-get install slurmctld slurmd slurm-client munge)")
    c = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm"))
    c.start()
    yield c
    c.stop()


def _job_args(probe_env, out, name, *extra):
    overrides = [o for o in probe_env["overrides"] if not o.startswith("out_dir")]
    return ["--chdir", str(ROOT), "--output", str(out / f"{name}-%j.out"), "--export", "ALL,OMP_NUM_THREADS=1",
            "slurm/train.sbatch", "experiments/ee_mllm_tiny.yaml", *overrides, f"out_dir={out}", f"name={name}",
            "data.val_shards=null", *extra]


def test_two_task_ddp_job_runs_through_slurm_environment(cluster, probe_env, tmp_path):
    job = cluster.sbatch("--nodes=1", "--ntasks-per-node=2",
                         *_job_args(probe_env, tmp_path, "ddp", "trainer.strategy=ddp", "trainer.max_steps=6",
                                    "data.resampled=true", "data.epoch_batches=3", "data.batch_size=8"))
    info = cluster.wait(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    log = "".join(p.read_text() for p in tmp_path.glob("ddp-*.out"))
    assert info["JobState"] == "COMPLETED", log[-3000:]
    result = json.loads((tmp_path / "ddp" / "align" / "result.json").read_text())
    assert result["world_size"] == 2 and result["global_step"] == 6


def test_usr1_requeues_and_the_rerun_resumes(cluster, probe_env, tmp_path):
    job = cluster.sbatch("--nodes=1", "--ntasks-per-node=1",
                         *_job_args(probe_env, tmp_path, "requeue", "trainer.max_steps=400",
                                    "trainer.ckpt_every_n_steps=10", "data.batch_size=8"))
    cluster.wait(job, {"RUNNING"})
    run_dir = tmp_path / "requeue" / "align"
    deadline = time.time() + 300
    while not (run_dir / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.5)
    assert (run_dir / "last.ckpt").exists()
    assert cluster.run("scancel", "--signal=USR1", job).returncode == 0  # what SLURM sends before a time-out
    deadline = time.time() + 200
    while time.time() < deadline:  # requeued jobs wait; start it again at once
        info = cluster.job(job)
        if info.get("Restarts") == "1" and info.get("JobState") == "PENDING":
            cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now")
        if info.get("Restarts") == "1" and info.get("JobState") in {"RUNNING", "COMPLETED"}:
            break
        time.sleep(0.5)
    info = cluster.wait(job, {"COMPLETED", "FAILED", "CANCELLED"})
    log = "".join(p.read_text() for p in tmp_path.glob("requeue-*.out"))
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log[-3000:]
    assert "auto-requeue" in log.lower() or "requeu" in log.lower()
    assert list(run_dir.glob("hpc_ckpt_*.ckpt"))
    result = json.loads((run_dir / "result.json").read_text())
    assert result["global_step"] == 400 and result["resumed_from_step"] > 0


def test_sweep_job_array_shares_a_postgresql_study_and_survives_a_cancelled_task(cluster, servers, probe_env, tmp_path):
    """`sbatch --array=0-1 slurm/sweep.sbatch`: two workers on one PostgreSQL study, logging to
    one MLflow server. `scancel` of one array task mid-trial: its trial goes stale, is marked
    FAIL (its MLflow run FAILED) and its point runs again in the other task; the study completes."""
    import mlflow
    import optuna

    svc = servers
    overrides = [o for o in probe_env["overrides"] if not o.startswith(("out_dir", "mlflow.tracking_uri"))]
    job = cluster.sbatch("--array=0-1", "--chdir", str(ROOT), "--output", str(tmp_path / "sweep-%a.out"),
                         "--export", "ALL,OMP_NUM_THREADS=1", "slurm/sweep.sbatch", "sweeps/weight_reuse.yaml",
                         "--storage", svc.storage, "--out-dir", str(tmp_path / "out"), *overrides,
                         f"mlflow.tracking_uri={svc.tracking_uri}", "trainer.max_steps=40",
                         "data.batch_size=8", "data.val_samples=16")
    deadline = time.time() + 300
    running = []
    while time.time() < deadline and len(running) < 2:  # both tasks inside a trial
        assert cluster.job(f"{job}_1").get("JobState") in {"PENDING", "RUNNING", None}, \
            "".join(p.read_text() for p in tmp_path.glob("sweep-*.out"))[-3000:]
        try:
            study = optuna.load_study(study_name="weight_reuse", storage=svc.storage)
            # inside a trial = its MLflow run exists (a trial is RUNNING a moment before that)
            running = [t for t in study.trials if t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs]
        except KeyError:  # not created yet
            pass
        time.sleep(0.5)
    assert len(running) == 2, "".join(p.read_text() for p in tmp_path.glob("sweep-*.out"))[-3000:]
    assert cluster.run("scancel", f"{job}_1").returncode == 0
    info = cluster.wait(f"{job}_0", {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=600)
    log = "".join(p.read_text() for p in tmp_path.glob("sweep-*.out"))
    assert info["JobState"] == "COMPLETED", log[-3000:]
    study = optuna.load_study(study_name="weight_reuse", storage=svc.storage)
    states = [t.state.name for t in study.trials]
    done = [t.user_attrs["grid_point"] for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(set(done)) == sorted(done) and len(done) == 3, states  # each point once
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1, states  # the cancelled task's trial
    client = mlflow.MlflowClient(tracking_uri=svc.tracking_uri)
    run = client.get_run(failed[0].user_attrs["mlflow_run_id"])
    # scancel sends SIGTERM: the worker fails its trial at once, naming the signal (issue 28); were
    # it killed outright (SIGKILL after SLURM's KillWait), the stale heartbeat would fail it instead.
    error = run.data.tags["error"]
    assert run.info.status == "FAILED" and ("stopped by SIGTERM" in error or "no heartbeat" in error), error


def test_a_sweep_task_runs_trials_on_two_processes(cluster, probe_env, tmp_path):
    """One array task (ntasks=1) whose trials use `trainer.devices=2`: the stage process's ranks
    are Lightning's, not srun's (the task count is not passed on), and the pruner still works."""
    import optuna
    from test_sweep_ddp import SWEEP

    sweep = tmp_path / "ddp_prune.yaml"
    sweep.write_text(SWEEP)
    overrides = [o for o in probe_env["overrides"] if not o.startswith(("out_dir", "mlflow.", "data.batch_size"))]
    job = cluster.sbatch("--chdir", str(ROOT), "--output", str(tmp_path / "sweep-%j.out"), "--export",
                         "ALL,OMP_NUM_THREADS=1", "slurm/sweep.sbatch", str(sweep), "--out-dir", str(tmp_path),
                         *overrides, f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db")
    info = cluster.wait(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=600)
    log = "".join(p.read_text() for p in tmp_path.glob("sweep-*.out"))
    assert info["JobState"] == "COMPLETED", log[-3000:]
    study = optuna.load_study(study_name="ddp_prune", storage=f"sqlite:///{tmp_path}/ddp_prune/study.db")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"], log[-3000:]
    result = json.loads((tmp_path / "ddp_prune" / "runs" / "trial_0000" / "align" / "result.json").read_text())
    assert result["world_size"] == 2
