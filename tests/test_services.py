"""Sweeps on real servers on loopback: `eelight services` starts PostgreSQL (Debian's, a throw-away
cluster in a temp folder) and an MLflow tracking server backed by it; two sweep workers share
the study through PostgreSQL and log to the server."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pytest

from eelight import services

pytestmark = pytest.mark.slow


def _worker(probe_env, out, svc, study="weight_reuse"):
    overrides = [o for o in probe_env["overrides"] if not o.startswith("mlflow.tracking_uri=")]
    return subprocess.Popen([sys.executable, "-m", "eelight.cli", "sweep", "--out-dir", str(out),
                             "--storage", svc.storage, "sweeps/weight_reuse.yaml", *overrides,
                             "trainer.max_steps=6", "data.val_samples=16", f"mlflow.tracking_uri={svc.tracking_uri}",
                             f"mlflow.experiment={study}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})


def test_two_workers_share_a_postgresql_study_and_an_mlflow_server(servers, probe_env, tmp_path):
    workers = [_worker(probe_env, tmp_path, servers) for _ in range(2)]
    outs = [w.communicate(timeout=600) for w in workers]
    for w, (_, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, err[-3000:]
    assert sum(json.loads(o.strip().splitlines()[-1])["ran"] for o, _ in outs) == 3
    study = optuna.load_study(study_name="weight_reuse", storage=servers.storage)
    done = Counter(t.user_attrs["grid_point"] for t in study.trials if t.state.name == "COMPLETE")
    assert sorted(done.values()) == [1, 1, 1]  # every grid point exactly once
    assert not (tmp_path / "weight_reuse" / "study.db").exists()  # no SQLite study on the side

    client = mlflow.MlflowClient(tracking_uri=servers.tracking_uri)
    exp = client.get_experiment_by_name("weight_reuse")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "study"]
    assert len(parents) == 1 and parents[0].info.run_id == study.user_attrs["mlflow_parent_run_id"]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["optuna.trial"] for r in nested) == ["0", "1", "2"] and len(runs) == 4
    assert all(r.info.status == "FINISHED" and "objective" in r.data.metrics for r in nested)
    report = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert {"report/summary.md", "report/trials.csv", "report/metric_vs_variant.png"} <= report
    artifacts = Path(servers.folder) / "artifacts"  # the server's artifact root holds them
    assert list(artifacts.rglob("summary.md"))


def test_services_restart_keeps_the_studies_and_a_stopped_server_is_one_line(servers, probe_env, tmp_path):
    """Stop and start again on the same folder: the study is still there. With the database
    stopped, a sweep names the storage in one line (exit 2) before any trial."""
    folder = Path(servers.folder)
    optuna.create_study(study_name="kept", storage=servers.storage)
    services.stop(folder)
    proc = _worker(probe_env, tmp_path, servers)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and err.startswith("eelight: error:") and len(err.strip().splitlines()) == 1
    assert servers.storage in err or servers.tracking_uri in err, err  # whichever is asked first
    again = services.start(folder, servers.pg_port, servers.mlflow_port)
    assert again.storage == servers.storage and again.tracking_uri == servers.tracking_uri
    assert "kept" in optuna.get_all_study_names(servers.storage)
    assert services.start(folder).mlflow_pid == again.mlflow_pid  # already running: found, not restarted
