"""Checkpoints are data, never code (issue 28, must-show 1): a crafted pickle whose payload
creates a file is refused in one line, exit 2, and the file is never created, wherever
eelight reads a checkpoint: `init_from`, an `eelight eval` target's `last.ckpt`, a run folder's
resume checkpoint (file, SLURM `hpc_ckpt_*`, sharded folder), and each part of a sharded folder
(`meta.pt`, `.metadata`, a byte entry of a `.distcp` shard)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from helpers import one_line_exit_2

from eelight.errors import CheckpointError


class Payload:
    """Unpickling this calls `open(marker, "w")`: the file appears if anything unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _evil_file(path: Path, marker: Path, raw: bool = False) -> Path:
    if raw:  # a bare pickle (torch's legacy format reads it with pickle.load)
        path.write_bytes(pickle.dumps(Payload(marker)))
    else:  # a torch zip file whose state_dict holds the payload
        torch.save({"state_dict": {"w": torch.zeros(2)}, "global_step": 1, "x": Payload(marker)}, path)
    return path


def _sharded(folder: Path, extra: dict | None = None) -> Path:
    """A genuine torch.distributed.checkpoint folder (one process) with Lightning's meta.pt."""
    import torch.distributed.checkpoint as dcp

    state = {"state_dict": {"w": torch.arange(4.0)}, **(extra or {})}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder)), no_dist=True)
    torch.save({"global_step": 3, "epoch": 0}, folder / "meta.pt")
    return folder


def test_our_own_files_still_load(tmp_path):
    from eelight.training.checkpoint import read_checkpoint
    from eelight.training.distributed import checkpoint_step

    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "global_step": 7, "callbacks": {"k": {"p": "x"}}}, plain)
    assert torch.equal(read_checkpoint(plain)["state_dict"]["w"], torch.ones(3)) and checkpoint_step(plain) == 7
    folder = _sharded(tmp_path / "sharded", {"optimizer": {"param_groups": [{"lr": 0.1, "betas": (0.9, 0.98)}]}})
    merged = read_checkpoint(folder)
    assert torch.equal(merged["state_dict"]["w"], torch.arange(4.0)) and merged["global_step"] == 3
    assert merged["optimizer"]["param_groups"][0]["lr"] == 0.1  # a byte entry, read as data
    assert checkpoint_step(folder) == 3


@pytest.mark.parametrize("raw", [False, True])
def test_a_crafted_init_from_is_refused_and_runs_nothing(probe_env, tmp_path, capsys, raw):
    marker = tmp_path / "pwned"
    evil = _evil_file(tmp_path / "evil.ckpt", marker, raw)
    err = one_line_exit_2(capsys, ["train", "experiments/ee_mllm_tiny.yaml", *probe_env["overrides"], "name=evil_init",
                           "stage=instruct", f"init_from={evil}"])
    assert str(evil) in err and "will not unpickle" in err and "run code" in err
    assert not marker.exists()


@pytest.mark.parametrize("name", ["last.ckpt", "hpc_ckpt_3.ckpt"])
def test_a_crafted_resume_checkpoint_is_refused_before_training(probe_env, tmp_path, capsys, name):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "runs" / "evil_resume" / "align"
    run_dir.mkdir(parents=True)
    _evil_file(run_dir / name, marker)
    err = one_line_exit_2(capsys, ["train", "experiments/ee_mllm_tiny.yaml", *probe_env["overrides"], "name=evil_resume",
                           f"out_dir={tmp_path / 'runs'}", "trainer.max_steps=1"])
    assert name in err and "will not unpickle" in err
    assert not marker.exists()
    assert not (run_dir / "mlflow_run_id").exists()  # refused before MLflow was touched


def test_a_crafted_last_ckpt_of_an_eval_target_is_refused(probe_env, tmp_path, capsys):
    from eelight.training.config import load_run_config, to_yaml

    marker = tmp_path / "pwned"
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text(to_yaml(load_run_config(["experiments/ee_mllm_tiny.yaml"],
                                                                probe_env["overrides"])))
    _evil_file(folder / "last.ckpt", marker, raw=True)
    err = one_line_exit_2(capsys, ["eval", str(folder), "--no-mlflow"])
    assert "last.ckpt" in err and "will not unpickle" in err
    assert not marker.exists()


def _evil_meta(folder: Path, marker: Path) -> None:
    _evil_file(folder / "meta.pt", marker)


def _evil_metadata(folder: Path, marker: Path) -> None:
    (folder / ".metadata").write_bytes(pickle.dumps(Payload(marker)))


@pytest.mark.parametrize("part", ["meta.pt", ".metadata", "byte entry"])
def test_each_part_of_a_sharded_folder_is_read_as_data(tmp_path, part):
    """`init_from` / `eelight eval` merge the folder; a resume only checks it (tensors stay on disk):
    both refuse the payload."""
    from eelight.training.checkpoint import read_checkpoint
    from eelight.training.distributed import checkpoint_step

    marker = tmp_path / "pwned"
    folder = _sharded(tmp_path / "sharded", {"extra": Payload(marker)} if part == "byte entry" else None)
    assert not marker.exists()  # saving pickles it, only loading would run it
    {"meta.pt": _evil_meta, ".metadata": _evil_metadata}.get(part, lambda f, m: None)(folder, marker)
    for read in (read_checkpoint, checkpoint_step):
        with pytest.raises(CheckpointError, match="will not unpickle"):
            read(folder)
    assert not marker.exists()


def test_a_crafted_sharded_resume_folder_is_refused_through_the_cli(probe_env, tmp_path, capsys):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "runs" / "evil_sharded" / "align"
    folder = _sharded(run_dir / "last.ckpt")
    _evil_meta(folder, marker)
    err = one_line_exit_2(capsys, ["train", "experiments/ee_mllm_tiny.yaml", *probe_env["overrides"], "name=evil_sharded",
                           f"out_dir={tmp_path / 'runs'}", "trainer.max_steps=1"])
    assert "meta.pt" in err and "will not unpickle" in err
    assert not marker.exists()
