"""Several eelight processes on one machine: the demo's align stage trained alone, then two
copies at once, with torch's default threads (every process one thread per core: before
thread placement) and with eelight's placement (each process its share, `training/threads.py`),
side by side in one run. Each training is a separate `eelight train` process; samples/s is
its own measurement after the first step (result.json), wall-clock is the whole process.

    .venv/bin/python benchmarks/shared_cores.py [--steps 60]

Goal (issue 12): two processes together reach >= 0.6x the samples/s of one alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eelight.demo import EXPERIMENT, prepare


def launch(name: str, root: Path, steps: int, threads: int | None) -> subprocess.Popen:
    args = [sys.executable, "-m", "eelight.cli", "train", EXPERIMENT, f"name={name}", f"out_dir={root}/runs",
            f"trainer.max_steps={steps}", "trainer.ckpt_every_n_steps=100000", "data.val_shards=null",
            f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db"]
    if threads is not None:
        args.append(f"trainer.threads={threads}")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


def run(label: str, copies: int, root: Path, steps: int, threads: int | None) -> list[dict]:
    start = time.perf_counter()
    procs = [launch(f"{label}_{i}", root, steps, threads) for i in range(copies)]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - start
    results = []
    for i, (p, out) in enumerate(zip(procs, outs, strict=True)):
        if p.returncode:
            raise SystemExit(f"{label}_{i} failed:\n{out[-2000:]}")
        result = json.loads((root / "runs" / f"{label}_{i}" / "align" / "result.json").read_text())
        results.append({"samples_per_s": result["samples_per_s"], "wall_s": wall})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    prepare()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} usable cores; align stage of {EXPERIMENT}, {args.steps} steps, batch 32, one process per run")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = []
        for label, threads in (("before", cores), ("after", None)):
            alone = run(f"{label}_alone", 1, root, args.steps, threads)[0]
            pair = run(f"{label}_pair", 2, root, args.steps, threads)
            combined = sum(r["samples_per_s"] for r in pair)
            rows.append((label, alone, pair, combined))
        print(f"{'threads':<34}{'alone samples/s':>16}{'two at once, each':>20}{'combined / alone':>18}"
              f"{'wall alone / pair':>20}")
        for label, alone, pair, combined in rows:
            what = f"torch default ({cores} per process)" if label == "before" else "eelight's share (trainer.threads=null)"
            each = " / ".join(f"{r['samples_per_s']:.0f}" for r in pair)
            print(f"{what:<34}{alone['samples_per_s']:>16.0f}{each:>20}{combined / alone['samples_per_s']:>18.2f}"
                  f"{alone['wall_s']:>10.0f} s / {pair[0]['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
