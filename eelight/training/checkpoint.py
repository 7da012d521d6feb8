"""Checkpoints: written atomically (one write to a temp file beside it + rename, so a kill or a
full disk never leaves a torn last.ckpt) and only after the step's metrics are logged (`LoggedStepCheckpoint`), and the
stage hand-off (`init_from`) loaded strictly."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from eelight.errors import CheckpointError, UserError
from eelight.models.hf_loading import load_strict
from eelight.models.mllm import MLLM
from eelight.safe_load import load_file, load_sharded


class DiskFullError(UserError, OSError):
    """A checkpoint did not fit on its file system: names the path and the bytes needed."""


def _tensor_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of the distinct tensor storages in a checkpoint (about its size on disk)."""
    import torch

    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v, seen) for v in obj)
    return 0


def write_atomically(checkpoint: dict[str, Any], path: str | Path) -> None:
    """torch.save once, to `<path>.tmp` beside it, then rename: a kill or a full disk never leaves
    a torn `path`, and the last good one stays until the new one is whole. A full disk (or any
    write error) removes the partial `.tmp` and is one line naming the path and the bytes needed."""
    import torch

    tmp = Path(f"{path}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exn:
        tmp.unlink(missing_ok=True)
        need = _tensor_bytes(checkpoint)
        free = shutil.disk_usage(Path(path).parent).free
        raise DiskFullError(
            f"cannot write checkpoint {path} ({exn.strerror or exn}): it needs about {need:,} bytes and "
            f"{free:,} are free there; the last good checkpoint is kept. Free space (or pass another "
            "out_dir=), then rerun the same command to resume") from exn


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        write_atomically(checkpoint, path)


class LoggedStepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose every-N-steps save comes after that step's metrics are logged.

    Lightning runs callbacks' `on_train_batch_end` before it logs the step's metrics, so a
    process killed during or just after a save lost those points for good: the resumed run
    starts after the checkpoint (MLflow's `train/loss` lacked steps 19 and 69 in one run).
    Here the save of step k runs when batch k+1 starts, or when the epoch or training ends; the
    model, optimiser and step saved are the same."""

    _pending: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._pending = batch_idx

    def _save_pending(self, trainer, pl_module) -> None:
        if self._pending is not None:
            batch_idx, self._pending = self._pending, None
            super().on_train_batch_end(trainer, pl_module, None, None, batch_idx)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._save_pending(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save_pending(trainer, pl_module)
        super().on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        """last.ckpt holds the final step also when max_steps is not a multiple of
        every_n_train_steps (Lightning skips that save once any last.ckpt was written, which
        left last.ckpt behind the run's end)."""
        self._save_pending(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A stage checkpoint (file or sharded folder) read as data (`eelight.safe_load`): a file
    that would run code, or is not a checkpoint, is a one-line `CheckpointError`."""
    if Path(path).is_dir():
        return _read_sharded(Path(path))
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"init_from={path} does not exist; run the previous stage first (it writes "
            "runs/<name>/align/last.ckpt)"
        )
    checkpoint = load_file(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint of eelight (no state_dict)")
    return checkpoint


def _read_sharded(folder: Path) -> dict[str, Any]:
    """A sharded (FSDP2) checkpoint folder, merged in memory as `fabric consolidate` merges it
    (the whole state must fit in CPU memory): so an instruct stage starts from an FSDP align
    stage's `last.ckpt/` directly, in a sweep's trial as on the command line."""
    if not (folder / "meta.pt").is_file() or not (folder / ".metadata").is_file() or not any(folder.glob("*.distcp")):
        raise CheckpointError(f"{folder} is a folder but not a sharded checkpoint (no meta.pt, .metadata and "
                              "*.distcp files); pass a stage's last.ckpt")
    checkpoint = load_sharded(folder)
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"sharded checkpoint {folder} is not a Lightning checkpoint of eelight (no state_dict)")
    return checkpoint


def init_from_checkpoint(model: MLLM, path: str | Path) -> None:
    """Load a previous stage's weights; every tensor must match (a missing or mis-shaped
    projector is an error, never a silently random projector)."""
    state = {k.removeprefix("model."): v for k, v in read_checkpoint(path)["state_dict"].items()}
    load_strict(model, state, f"init_from={path} (trained with another model variant or config?)")
