"""A trial stage on several devices (`trainer.devices` x `trainer.num_nodes` > 1) runs as its
own `eelight train` process, a child of the sweep worker.

Lightning's DDP launcher starts the other ranks by running the *current command line* again;
inside a sweep worker that command is `eelight sweep`, so each extra rank would be another
worker popping trials. A child `eelight train <stage.yaml>` gives Lightning a command line
that is one stage, and its ranks are its own children. The worker meanwhile keeps the trial's
heartbeat; the child's rank 0 reports to the trial and prunes (`sweeps/pruning.py`), logs into
the trial's MLflow run (`mlflow.run_id` in the stage's config) and writes `result.json`.

Under SLURM the worker is one task of the array: the child's ranks are placed by Lightning on
the task's CPUs/GPUs, not by srun, so the child does not see the job's task count. A child
dies with its worker (Linux `PR_SET_PDEATHSIG`): a killed worker leaves no stage training on.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from typing import Any

from eelight.sweeps.pruning import TRIAL_ENV
from eelight.training.config import RunConfig, to_yaml
from eelight.training.distributed import world_size

PARENT_ENV = "EELIGHT_WORKER_PID"
_SLURM_TASKS = ("SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_STEP_NUM_TASKS")


def run_stage_process(cfg: RunConfig, trial_spec: str | None) -> dict[str, Any]:
    """Train one stage in a child process; returns its result. Its stderr is passed on."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    stage_yaml = cfg.run_dir / "stage.yaml"
    stage_yaml.write_text(to_yaml(cfg))
    env = {k: v for k, v in os.environ.items() if k not in (*_SLURM_TASKS, TRIAL_ENV)}
    env[PARENT_ENV] = str(os.getpid())
    if trial_spec:
        env[TRIAL_ENV] = trial_spec
    (cfg.run_dir / "result.json").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "eelight.cli", "train", str(stage_yaml)]
    tail: collections.deque[str] = collections.deque(maxlen=5)
    with subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            if line.strip():
                tail.append(line.strip())
    if proc.returncode != 0:
        raise RuntimeError(f"stage {cfg.stage} on {world_size(cfg.trainer)} processes exited with status "
                           f"{proc.returncode}: {tail[-1] if tail else 'no output'}")
    return json.loads((cfg.run_dir / "result.json").read_text())


def die_with_worker() -> None:
    """In a stage process (or its ranks): end when the worker that started it ends."""
    if PARENT_ENV not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when the parent ends
    if os.getppid() == 1:  # the parent already ended before the call
        os._exit(1)
