"""Checkpoints are data, never code: every checkpoint file eelight reads goes through here.

A `.ckpt`/`.pt` file is a pickle, and unpickling can call any function the file names (a file
that calls `os.system` runs its command on load). So:

- a checkpoint file is read with `torch.load(weights_only=True)`: tensors, containers and plain
  values only. eelight's own checkpoints (a stage's `last.ckpt`, SLURM's `hpc_ckpt_*.ckpt`, a
  sharded folder's `meta.pt`, `fabric consolidate` output) hold nothing else, so no allow-list of
  extra types is needed;
- a sharded (torch.distributed.checkpoint) folder's `.metadata` is a plain pickle that torch
  reads with `pickle.load`: it is first read here by an unpickler that may build only the DCP
  metadata classes (`_DCP_GLOBALS`), and its byte entries (which torch reads with
  `weights_only=False`) are read here with `weights_only=True`.

Anything else is refused with a `CheckpointError` that names the file and what it holds;
a file that is not a checkpoint at all (random or truncated bytes) is one line too.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import Any

from eelight.errors import CheckpointError, one_line

REFUSED = ("holds objects eelight will not unpickle ({what}): a checkpoint is data, and eelight reads only "
           "tensors and plain values from one so that no file can run code when it is loaded; use a "
           "checkpoint eelight wrote")

# What a torch.distributed.checkpoint `.metadata` pickle may build (seen in every sharded checkpoint
# Lightning's ModelParallelStrategy writes): DCP's own dataclasses, sizes, dtypes, layouts, paths.
_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
_DCP_GLOBALS = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
                ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
                ("pathlib", "PureWindowsPath")}


def _refusal(exn: BaseException) -> str | None:
    """What torch's weights-only unpickler refused (`GLOBAL posix.system ...`), or None when
    the error is not a refusal but a file that does not parse."""
    text = str(exn)
    if "Weights only load failed" not in text:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1])
    return detail.removeprefix("Trying to load ").rstrip(".")[:200]


def load_file(path: str | Path | io.BytesIO, what: str = "checkpoint") -> Any:
    """A torch-saved file's contents, read as data (`weights_only=True`), on the CPU. `what`
    names it in an error (with the path, when `path` is one)."""
    import torch

    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": a hostile file's noise
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exn:  # noqa: BLE001 - random bytes raise ValueError, MemoryError, UnicodeDecodeError...
        refused = _refusal(exn)
        if refused:
            raise CheckpointError(f"{_label(what, path)} " + REFUSED.format(what=refused)) from exn
        raise CheckpointError(f"{_label(what, path)} cannot be read ({one_line(exn)[:200] or type(exn).__name__}): "
                              "truncated or not a checkpoint; rerun the stage that writes it") from exn


def _label(what: str, path: Any) -> str:
    return what if isinstance(path, io.IOBase) else f"{what} {path}"


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        import torch

        allowed = (module in _DCP_MODULES or (module, name) in _DCP_GLOBALS
                   or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)))
        if not allowed:
            raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")
        return super().find_class(module, name)


def check_dcp_metadata(folder: Path) -> Any:
    """The sharded checkpoint's `.metadata`, unpickled with only DCP's own classes allowed
    (torch itself reads it with a plain `pickle.load`)."""
    path = folder / ".metadata"
    try:
        return _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
    except pickle.UnpicklingError as exn:
        if str(exn).startswith("GLOBAL "):
            raise CheckpointError(f"sharded checkpoint file {path} " + REFUSED.format(what=exn)) from exn
        raise CheckpointError(f"sharded checkpoint file {path} cannot be read ({one_line(exn)[:200]}): "
                              "truncated or not a checkpoint; rerun the stage that writes it") from exn
    except Exception as exn:  # noqa: BLE001 - random bytes raise many kinds
        raise CheckpointError(f"sharded checkpoint file {path} cannot be read ({type(exn).__name__}): "
                              "truncated or not a checkpoint; rerun the stage that writes it") from exn


def _safe_planner(folder: Path, keys: list[str] | None = None):
    """DCP's planner for reading a folder without a model, its byte entries read as data."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.planner import ReadItem

    class SafeBytesPlanner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
            name = read_item.dest_index.fqn
            data = load_file(value, f"entry {name} of sharded checkpoint {folder}")
            if self.flatten_state_dict:
                from torch.distributed.checkpoint._traverse import set_element

                set_element(self.original_state_dict, self.mappings[name], data)
            else:
                self.state_dict[name] = data

    return SafeBytesPlanner(keys=keys)


def _dcp_read(folder: Path, keys: list[str] | None) -> dict[str, Any]:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict[str, Any] = {}
    try:
        _load_state_dict(state, storage_reader=FileSystemReader(folder), planner=_safe_planner(folder, keys), no_dist=True)
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as exn:  # noqa: BLE001 - DCP's own is a BaseException
        inner = next((e for e in _causes(exn) if isinstance(e, CheckpointError)), None)
        if inner is not None:
            raise inner from exn
        raise CheckpointError(f"sharded checkpoint {folder} cannot be read ({one_line(exn)[:300]}): a shard is "
                              "missing or truncated; rerun the stage that writes it") from exn
    return state


def _causes(exn: BaseException) -> list[BaseException]:
    """The exception, what it wraps (DCP collects its readers' errors), and their causes."""
    out, todo = [], [exn]
    while todo:
        e = todo.pop()
        out.append(e)
        todo += [c for c in (e.__cause__, e.__context__) if c is not None and c not in out]
        for failure in getattr(e, "failures", {}).values():  # DCP's (exception, traceback) per rank
            todo += [v for v in (failure if isinstance(failure, tuple) else (failure,))
                     if isinstance(v, BaseException)]
    return out


def load_sharded(folder: Path) -> dict[str, Any]:
    """A sharded checkpoint folder merged in memory (what `fabric consolidate` writes), read as
    data: its `.metadata`, byte entries and `meta.pt` checked as above."""
    check_dcp_metadata(folder)
    state = _dcp_read(folder, None)
    meta = folder / "meta.pt"
    if meta.is_file():
        state.update(load_file(meta, "sharded checkpoint file"))
    return state


def check_sharded(folder: Path) -> dict[str, Any]:
    """A sharded checkpoint that training will resume from (torch reads its metadata and byte
    entries unguarded): each checked as data here first, tensors left on disk. Returns meta.pt."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    metadata = check_dcp_metadata(folder)
    byte_keys = [k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)]
    if byte_keys:
        _dcp_read(folder, byte_keys)
    meta = load_file(folder / "meta.pt", "sharded checkpoint file")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{folder / 'meta.pt'} is not the metadata of a Lightning checkpoint (not a dict)")
    return meta
