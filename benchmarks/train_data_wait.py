"""Does the tiny CPU training run wait on the loader? The demo's instruct stage (64 px probe,
batch 32) trained for --steps steps with 0 and 1 DataLoader workers, and with 1 worker plus
one torch thread (a core left to the loader), side by side in one run. A Lightning callback
times each step (batch start -> batch end) and the wait for the next batch (batch end ->
next batch start: the data fetch on the training loop's critical path).

    .venv/bin/python benchmarks/train_data_wait.py [--steps 150]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from eelight.demo import EXPERIMENT, prepare
from eelight.training.config import load_run_config
from eelight.training.run import train

SKIP = 10  # warm-up steps left out (worker start-up, first allocations)


class StepTimer(Callback):
    def __init__(self) -> None:
        self.steps: list[float] = []
        self.waits: list[float] = []
        self._start = self._end = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start = time.perf_counter()
        if self._end is not None:
            self.waits.append(self._start - self._end)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._end = time.perf_counter()
        self.steps.append(self._end - self._start)


def measure(root: Path, workers: int, threads: int, steps: int, batch_size: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    name = f"w{workers}_t{threads}"
    cfg = load_run_config([EXPERIMENT, "experiments/stages/instruct.yaml"], [
        f"name={name}", f"out_dir={root}", f"trainer.max_steps={steps}", f"data.num_workers={workers}",
        f"data.batch_size={batch_size}", "data.val_shards=null", f"trainer.ckpt_every_n_steps={steps}",
        f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db",
    ])
    timer = StepTimer()
    train(cfg, callbacks=[timer])
    step = statistics.mean(timer.steps[SKIP:])
    wait = statistics.mean(timer.waits[SKIP:])
    return {"step_ms": 1e3 * step, "wait_ms": 1e3 * wait, "wait_frac": wait / (step + wait),
            "samples_s": batch_size / (step + wait)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    prepare()  # the probe shards and tiny backbones, as `make demo` builds them
    settings = [(0, 2), (1, 2), (1, 1)]  # (workers, torch threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers, threads in settings:
            rows.append((workers, threads, measure(Path(tmp), workers, threads, args.steps, args.batch_size)))
    print(f"\ninstruct stage, batch {args.batch_size}, {args.steps} steps (first {SKIP} left out), "
          f"{torch.get_num_interop_threads()} interop threads")
    print("workers  torch threads  step ms  data wait ms  wait / (step + wait)  samples/s")
    for workers, threads, r in rows:
        print(f"{workers:7d}  {threads:13d}  {r['step_ms']:7.1f}  {r['wait_ms']:12.2f}  "
              f"{r['wait_frac']:20.1%}  {r['samples_s']:9.0f}")


if __name__ == "__main__":
    main()
