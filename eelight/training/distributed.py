"""Strategies: the same config on one CPU, DDP, or FSDP2 (`trainer.strategy=fsdp`).

FSDP goes through Lightning's `ModelParallelStrategy` with `data_parallel_size` set to
every device (its default on 2 devices would be tensor-parallel 2, sharding nothing) and
`MLLMModule.configure_model` applying `fully_shard` to each decoder layer (one wrap unit,
with whatever the variant adds to it) and then to the root. It also runs on CPU (gloo).
Checkpoints are written atomically in every case: a file via `AtomicCheckpointIO`, a
sharded folder into `<path>.tmp` and then renamed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from eelight.errors import CheckpointError, ConfigError
from eelight.safe_load import check_sharded
from eelight.training.checkpoint import AtomicCheckpointIO, DiskFullError, read_checkpoint
from eelight.training.config import TrainerConfig


class AtomicModelParallelStrategy(ModelParallelStrategy):
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options=None) -> None:
        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(path.name + ".tmp")
        if self.global_rank == 0 and tmp.exists():
            shutil.rmtree(tmp)
        self.barrier("eelight_ckpt_clean")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
        except OSError as exn:  # a full disk: no partial folder left, the last good one kept
            shutil.rmtree(tmp, ignore_errors=True)
            raise DiskFullError(f"cannot write sharded checkpoint {path} ({exn.strerror or exn}); the last good "
                                "checkpoint is kept. Free space (or pass another out_dir=), then rerun the same "
                                "command to resume") from exn
        self.barrier("eelight_ckpt_written")
        if self.global_rank == 0:
            old = path.with_name(path.name + ".old")
            if path.exists():
                path.rename(old)
            tmp.rename(path)
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        self.barrier("eelight_ckpt_renamed")


def world_size(cfg: TrainerConfig) -> int:
    """Processes in the run: devices per node x nodes."""
    return cfg.devices * cfg.num_nodes


def check_devices(cfg: TrainerConfig) -> None:
    """A GPU run on a machine without enough CUDA devices is one line (ConfigError), not
    Lightning's MisconfigurationException traceback from inside Trainer()."""
    if cfg.accelerator not in ("gpu", "cuda"):
        return
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < cfg.devices:
        raise ConfigError(
            f"trainer.accelerator={cfg.accelerator} with trainer.devices={cfg.devices}, but this machine has "
            f"{found} CUDA device(s) (torch {torch.__version__}); run it on a GPU node, or pass "
            f"trainer.accelerator=cpu")


def make_strategy(cfg: TrainerConfig) -> Any:
    if cfg.strategy == "fsdp":
        return AtomicModelParallelStrategy(data_parallel_size=world_size(cfg), tensor_parallel_size=1)
    return cfg.strategy


def checkpoint_plugins(cfg: TrainerConfig) -> list:
    # ModelParallelStrategy writes its own (sharded) checkpoints and refuses a CheckpointIO.
    return [] if cfg.strategy == "fsdp" else [AtomicCheckpointIO()]


def checkpoint_step(path: Path) -> int:
    """The global step of a checkpoint file or sharded checkpoint folder, each read as data
    (a resume never hands Lightning a file that was not checked first)."""
    step = check_sharded(path).get("global_step") if path.is_dir() else read_checkpoint(path).get("global_step")
    if not isinstance(step, int):
        raise CheckpointError(f"{path} is not a checkpoint eelight wrote (no global_step); delete it, or use a "
                              "new name= to start over")
    return step


def shard_fraction(model: torch.nn.Module) -> float:
    """This rank's share of the parameters (1.0 when nothing is sharded)."""
    from torch.distributed.tensor import DTensor

    local = total = 0
    for p in model.parameters():
        total += p.numel()
        local += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
    return local / max(total, 1)


def release_process_group(strategy: Any) -> None:
    """End a finished distributed run cleanly: every rank waits for the others (rank 0 may
    still be logging to MLflow), then the process group is destroyed. A rank that exits with
    a live Gloo group can abort at interpreter exit ("terminate called without an active
    exception"), which srun --kill-on-bad-exit turns into a failed job."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        strategy.barrier("eelight-run-finished")
        dist.destroy_process_group()
