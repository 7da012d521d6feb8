"""Trial dispatch overhead of a sweep: from a worker asking the study for a trial (`study.ask`)
to that trial's training starting, per study storage — a SQLite file, a PostgreSQL server, an
Optuna journal file — with 1, 2 and 4 workers at once. Training is replaced by a no-op (the rest
of the worker is the product's: stale-trial checks, the duplicate check, heartbeats, the trial's
MLflow run with its params, the resolved model and its FLOPs, `tell`), so the workers contend
for the storage as hard as they can: an upper bound on what real trials, minutes long, see.
MLflow is the same tracking server for every storage (`eelight services`), so only the study
storage changes between rows.

    .venv/bin/python benchmarks/dispatch.py [--trials 24]

Prints, per storage and worker count: trials run, median and 90th-percentile ask -> train
seconds (each worker's first trial left out: it overlaps the other workers' start-up), and the
whole cycle per trial (ask -> next ask) per worker.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eelight.demo import prepare


def _worker(sweep_file: str, out_dir: str, storage: str, log: str, overrides: list[str]) -> None:
    """One sweep worker whose training returns at once; appends (ask, train start) times to `log`."""
    import optuna

    import eelight.training.run as run
    from eelight.sweeps.config import load_sweep
    from eelight.sweeps.runner import run_worker

    asked: list[float] = []
    ask = optuna.Study.ask

    def timed_ask(self, *args, **kwargs):
        asked.append(time.perf_counter())
        return ask(self, *args, **kwargs)

    done = Path(out_dir) / "noop.ckpt"
    done.touch()

    def no_training(cfg, callbacks=()):
        if cfg.stage == "align":  # the trial's first stage: its training would start here
            with open(log, "a") as fh:
                fh.write(json.dumps({"pid": os.getpid(), "ask": asked[-1], "train": time.perf_counter()}) + "\n")
        return {"checkpoint": str(done), "global_step": 1, "resumed_from_step": 0, "world_size": 1,
                "metrics": {"probe/accuracy": 0.5}, "samples_per_s": None}

    optuna.Study.ask = timed_ask
    run.train = no_training
    sweep = load_sweep(sweep_file, overrides)
    sweep.out_dir, sweep.storage = out_dir, storage or None
    run_worker(sweep)


def _sweep_file(root: Path, name: str, trials: int) -> Path:
    f = root / f"{name}.yaml"
    f.write_text(f"name: {name}\nexperiment: [experiments/ee_mllm_tiny.yaml]\nstages: [align, instruct]\n"
                 "stage_configs: {instruct: [experiments/stages/instruct.yaml]}\n"
                 f"space: {{optim.warmup_steps: {{type: grid, values: {list(range(1, trials + 1))}}}}}\n"
                 "objective: {metric: probe/accuracy, direction: maximize}\n")
    return f


def measure(root: Path, kind: str, storage: str, workers: int, trials: int, tracking: str) -> dict:
    name = f"dispatch_{kind}_{workers}"
    out, log = root / name, root / f"{name}.jsonl"
    out.mkdir()
    sweep = _sweep_file(root, name, trials)
    url = {"sqlite": f"sqlite:///{out}/study.db", "journal": f"journal:{out}/study.journal"}.get(kind, storage)
    cmd = [sys.executable, __file__, "--worker", str(sweep), str(out), url, str(log), f"mlflow.tracking_uri={tracking}"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(workers)]
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode:
            raise RuntimeError(f"{name} worker failed:\n{err[-3000:]}")
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    # A worker's first trial overlaps the other workers' start-up (imports on the same cores): left out.
    firsts = {min((r for r in rows if r["pid"] == pid), key=lambda r: r["ask"])["ask"] for pid in {r["pid"] for r in rows}}
    waits = sorted(r["train"] - r["ask"] for r in rows if r["ask"] not in firsts) or [float("nan")]
    cycles = []
    for pid in {r["pid"] for r in rows}:
        asks = sorted(r["ask"] for r in rows if r["pid"] == pid)
        cycles += [b - a for a, b in zip(asks, asks[1:], strict=False)]
    return {"storage": kind, "workers": workers, "trials": len(rows), "median_s": statistics.median(waits),
            "p90_s": waits[int(0.9 * (len(waits) - 1))],
            "cycle_s": statistics.median(cycles) if cycles else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=24, help="grid points per study")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sweep, out, storage, log, *overrides = args.worker
        _worker(sweep, out, storage, log, overrides)
        return
    from eelight import services

    prepare()
    root = Path(tempfile.mkdtemp(prefix="eelight-dispatch-"))
    root.chmod(0o755)  # the database server may run as the postgres user
    svc = services.start(root / "services", 5533, 5501)
    try:
        print(f"{'storage':<10} {'workers':>7} {'trials':>6} {'ask->train median':>18} {'p90':>7} {'cycle/trial':>12}")
        for kind in ("sqlite", "postgresql", "journal"):
            for workers in (1, 2, 4):
                storage = svc.storage if kind == "postgresql" else ""
                t0 = time.perf_counter()
                r = measure(root, kind, storage, workers, args.trials, svc.tracking_uri)
                print(f"{r['storage']:<10} {r['workers']:>7} {r['trials']:>6} {r['median_s']:>17.2f}s "
                      f"{r['p90_s']:>6.2f}s {r['cycle_s']:>11.2f}s   ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        services.stop(root / "services")


if __name__ == "__main__":
    main()
