"""SIGTERM and SIGINT (Ctrl-C) during training, outside SLURM: finish the current step, save it
(`last.ckpt`), mark the MLflow run KILLED with the signal named, and exit with 128 + signal;
the same command then resumes.

Lightning's own SIGTERM handling raises a `SystemExit` at the next step without saving, and its
Ctrl-C handling exits 1 with the run left as it was. Under SLURM's auto-requeue (SIGUSR1 before
the kill) Lightning's `hpc_ckpt_*` handling stays in charge: this callback is not installed there.
"""

from __future__ import annotations

import signal

from lightning.pytorch.callbacks import Callback

from eelight.errors import UserError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(UserError):
    """Training stopped by a signal after saving its step; the CLI exits with `exit_code`."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopOnSignal(Callback):
    """Turns SIGTERM / SIGINT into "stop after this step" (`trainer.should_stop`): the fit loop
    ends normally, so `LoggedStepCheckpoint.on_train_end` saves the step reached."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._trainer = None

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the save
        self.signum = signum
        if self._trainer is not None:
            self._trainer.should_stop = True

    def on_train_start(self, trainer, pl_module) -> None:
        # After Lightning registered its own SIGTERM handler (Trainer._run), so this one wins; the
        # Trainer's teardown puts back the handlers from before `fit`.
        self._trainer = trainer
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.signum is not None:
            trainer.should_stop = True

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None


def signal_callback() -> StopOnSignal | None:
    """The callback, except under SLURM (its requeue handling) or off the main thread."""
    import threading

    from lightning.fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect() or threading.current_thread() is not threading.main_thread():
        return None
    return StopOnSignal()
