"""Checkpoints: written atomically (temp file + rename, so a kill never leaves a torn
last.ckpt), and the stage hand-off (`init_from`) loaded strictly."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from eelight.errors import CheckpointError
from eelight.models.hf_loading import load_strict
from eelight.models.mllm import MLLM


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        tmp = f"{path}.tmp"
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    if Path(path).is_dir():
        raise CheckpointError(
            f"{path} is a sharded (FSDP) checkpoint folder; merge it first with `fabric consolidate {path}` "
            "and pass the consolidated file"
        )
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"init_from={path} does not exist; run the previous stage first (it writes "
            "runs/<name>/align/last.ckpt)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exn:
        raise CheckpointError(f"checkpoint {path} cannot be read ({str(exn).splitlines()[0] or type(exn).__name__}): "
                              "truncated or not a checkpoint; rerun the stage that writes it") from exn
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint of eelight (no state_dict)")
    return checkpoint


def init_from_checkpoint(model: MLLM, path: str | Path) -> None:
    """Load a previous stage's weights; every tensor must match (a missing or mis-shaped
    projector is an error, never a silently random projector)."""
    state = {k.removeprefix("model."): v for k, v in read_checkpoint(path)["state_dict"].items()}
    load_strict(model, state, f"init_from={path} (trained with another model variant or config?)")
