"""Mistakes a user makes reach them as one line and exit status 2 through the CLI, never a
traceback: YAML syntax, truncated / empty / foreign init_from checkpoints, a file-store
tracking URI."""

import pytest
import torch

from eelight.cli import main


def _one_line_exit_2(capsys, argv) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata:\n  batch_size: [1, 2\n  template: probe\n")
    err = _one_line_exit_2(capsys, ["train", str(bad)])
    assert f"{bad}, line" in err and "YAML syntax error" in err


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not really a zip", "dict"])
def test_unreadable_init_from_is_named(probe_env, tmp_path, capsys, content):
    ckpt = tmp_path / "stage.ckpt"
    if content == "dict":
        torch.save({"something": 1}, ckpt)  # a torch file, but no Lightning state_dict
    else:
        ckpt.write_bytes(content)
    err = _one_line_exit_2(capsys, ["train", "experiments/ee_mllm_tiny.yaml", *probe_env["overrides"],
                                    "name=bad_init", "stage=instruct", f"init_from={ckpt}"])
    assert str(ckpt) in err and ("cannot be read" in err or "no state_dict" in err)


def test_truncated_checkpoint_is_named(probe_env, tmp_path, capsys):
    from eelight.training.checkpoint import read_checkpoint

    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, whole)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert "w" in read_checkpoint(whole)["state_dict"]
    err = _one_line_exit_2(capsys, ["train", "experiments/ee_mllm_tiny.yaml", *probe_env["overrides"],
                                    "name=cut_init", "stage=instruct", f"init_from={cut}"])
    assert "cut.ckpt cannot be read" in err


def test_file_store_tracking_uri_is_refused(probe_env, tmp_path, capsys):
    err = _one_line_exit_2(capsys, ["train", "experiments/ee_mllm_tiny.yaml", *probe_env["overrides"],
                                    "name=file_store", "trainer.max_steps=1", f"mlflow.tracking_uri=file://{tmp_path}"])
    assert "file store is off" in err
