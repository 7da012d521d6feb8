"""A quiet progress line for training runs: at most one line every `every_s` seconds on stderr
(step, loss, samples/s, time left), instead of a progress bar redrawn on every step (which
floods logs that are files, as under SLURM or a sweep). `trainer.progress_every_s=0` is silent."""

from __future__ import annotations

import sys
import time


def progress_callback(label: str, max_steps: int, every_s: float):
    from lightning.pytorch.callbacks import Callback

    class Progress(Callback):
        def __init__(self) -> None:
            self.start: float | None = None
            self.first_step = 0
            self.last = 0.0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            now = time.monotonic()
            step = trainer.global_step
            if self.start is None:
                self.start, self.first_step, self.last = now, step, now
                return
            if now - self.last < every_s and step < max_steps:
                return
            self.last = now
            rate = (step - self.first_step) / max(now - self.start, 1e-9)  # steps/s since the first step
            loss = trainer.callback_metrics.get("train/loss")
            left = (max_steps - step) / rate if rate > 0 else float("nan")
            print(f"[train {label}] step {step}/{max_steps}"
                  + (f" loss {float(loss):.4f}" if loss is not None else "")
                  + f" {rate * batch['input_ids'].shape[0]:.0f} samples/s, {left:.0f} s left"
                  + _data_notes(pl_module), file=sys.stderr, flush=True)

    return Progress()


def _data_notes(module) -> str:
    """Samples skipped (by kind) and cut by data.max_length so far, when there are any."""
    bad = sum(module.bad_tracker.counts.values()) if hasattr(module, "bad_tracker") else 0
    cut = getattr(module, "cut_samples", 0)
    notes = ([f"{bad} bad samples skipped"] if bad else []) + ([f"{cut} cut by data.max_length"] if cut else [])
    return f" ({', '.join(notes)})" if notes else ""
