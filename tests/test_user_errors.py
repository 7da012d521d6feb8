"""Mistakes a user makes reach them as one line and exit status 2 through the CLI, never a
traceback: YAML syntax, truncated / empty / foreign init_from checkpoints, a file-store
tracking URI, an unreachable tracking server or study storage."""

from pathlib import Path

import pytest
import torch
from helpers import one_line_exit_2

from eelight.cli import main


def _started_run_exit_2(argv) -> str:
    """A real `eelight` process whose run had begun (its log lines come first): exit 2, no
    traceback, and the error is the one last line."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = subprocess.run([sys.executable, "-m", "eelight.cli", *argv], capture_output=True, text=True, env=env,
                         timeout=300)
    err = out.stderr.strip()
    assert out.returncode == 2 and "Traceback" not in err, err
    lines = err.splitlines()
    assert [line for line in lines if line.startswith("eelight: error:")] == lines[-1:], err
    return lines[-1]


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata:\n  batch_size: [1, 2\n  template: probe\n")
    err = one_line_exit_2(capsys, ["train", str(bad)])
    assert f"{bad}, line" in err and "YAML syntax error" in err
    sweep = tmp_path / "sweep.yaml"  # a sweep file too (it was a traceback)
    sweep.write_text("name: x\noverrides: [data.train_shards=a-{0..1}.tar]\n")
    err = one_line_exit_2(capsys, ["sweep", str(sweep)])
    assert f"{sweep}, line 2" in err and "YAML syntax error" in err


@pytest.mark.parametrize("key", ["optim.lr", "optim.projector_lr", "optim.new_params_lr", "optim.weight_decay"])
def test_negative_learning_rate_is_refused(capsys, key):
    """AdamW checks only its default lr: a negative per-group rate used to train "uphill"."""
    err = one_line_exit_2(capsys, ["train", "experiments/ee_mllm_tiny.yaml", f"{key}=-0.001"])
    assert f"{key}=-0.001 must be >= 0.0" in err


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not really a zip", "dict"])
def test_unreadable_init_from_is_named(probe_env, tmp_path, capsys, content):
    ckpt = tmp_path / "stage.ckpt"
    if content == "dict":
        torch.save({"something": 1}, ckpt)  # a torch file, but no Lightning state_dict
    else:
        ckpt.write_bytes(content)
    err = one_line_exit_2(capsys, ["train", "experiments/ee_mllm_tiny.yaml", *probe_env["overrides"],
                                    "name=bad_init", "stage=instruct", f"init_from={ckpt}"])
    assert str(ckpt) in err and ("cannot be read" in err or "no state_dict" in err)


def test_truncated_checkpoint_is_named(probe_env, tmp_path, capsys):
    from eelight.training.checkpoint import read_checkpoint

    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, whole)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert "w" in read_checkpoint(whole)["state_dict"]
    err = one_line_exit_2(capsys, ["train", "experiments/ee_mllm_tiny.yaml", *probe_env["overrides"],
                                    "name=cut_init", "stage=instruct", f"init_from={cut}"])
    assert "cut.ckpt cannot be read" in err


def test_file_store_tracking_uri_is_refused(probe_env, tmp_path, capsys):
    err = one_line_exit_2(capsys, ["train", "experiments/ee_mllm_tiny.yaml", *probe_env["overrides"],
                                    "name=file_store", "trainer.max_steps=1", f"mlflow.tracking_uri=file://{tmp_path}"])
    assert "file store is off" in err


def test_bare_train_asks_for_an_experiment_file(capsys):
    err = one_line_exit_2(capsys, ["train"])
    assert "needs an experiment file" in err


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["random", "empty"])
def test_a_training_shard_that_is_not_a_tar_stops_in_seconds(probe_env, tmp_path, kind):
    import time

    shard = tmp_path / f"{kind}-000000.tar"
    shard.write_bytes(b"" if kind == "empty" else bytes(range(256)) * 40)
    start = time.perf_counter()
    err = _started_run_exit_2(["train", "experiments/ee_mllm_tiny.yaml", *probe_env["overrides"],
                               f"name=broken_{kind}", f"data.train_shards={shard}", "trainer.max_steps=5"])
    assert f"{kind}-000000.tar" in err and "can be read as a tar" in err
    assert time.perf_counter() - start < 60


@pytest.mark.slow
def test_bad_sample_limit_reaches_the_user_as_one_line(probe_env, tmp_path):
    import tarfile

    shards = next(o.split("=", 1)[1] for o in probe_env["overrides"] if o.startswith("data.train_shards="))
    first = shards.replace("{000000..000003}", "000000")
    bad = tmp_path / "bad-000000.tar"
    with tarfile.open(first) as src, tarfile.open(bad, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name.endswith(".png"):
                data = b"\x89PNG broken"  # every image unreadable
            member.size = len(data)
            dst.addfile(member, __import__("io").BytesIO(data))
    err = _started_run_exit_2(["train", "experiments/ee_mllm_tiny.yaml", *probe_env["overrides"],
                               "name=bad_samples", f"data.train_shards={bad}", "trainer.max_steps=5",
                               "data.max_bad_samples=3", "data.num_workers=1"])
    assert "exceed data.max_bad_samples=3" in err and "bad-000000.tar" in err


def _script(name, *args):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    return subprocess.run([sys.executable, str(root / "data_pipelines" / name), *args], capture_output=True,
                          text=True)


def test_data_pipeline_scripts_answer_mistakes_in_one_line(tmp_path):
    out = _script("index_shards.py", "--shards", str(tmp_path / "nothing-{000..003}.tar"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "index_shards.py: error: shard" in out.stderr and "nothing-000.tar does not exist" in out.stderr
    (tmp_path / "records.json").write_text("{not json")
    out = _script("llava_json.py", "--json", str(tmp_path / "records.json"), "--images", str(tmp_path),
                  "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "records.json is not JSON" in out.stderr


def test_hf_folder_whose_weights_do_not_match_its_config_is_one_line(probe_env, tmp_path, capsys):
    import json
    import shutil

    llm = next(o.split("=", 1)[1] for o in probe_env["overrides"] if o.startswith("model.llm.path="))
    bad = tmp_path / "llm"
    shutil.copytree(llm, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_hidden_layers"] += 1
    (bad / "config.json").write_text(json.dumps(cfg))
    err = one_line_exit_2(capsys, ["train", "experiments/ee_mllm_tiny.yaml", *probe_env["overrides"],
                                    "name=bad_hf", f"model.llm.path={bad}", "trainer.max_steps=1"])
    assert f"is missing from LLM checkpoint {bad}" in err


def test_export_whose_weights_do_not_match_its_config_is_one_line(probe_env, tmp_path, capsys):
    from eelight.data.tokenizer import load_tokenizer
    from eelight.export import save_export
    from eelight.models import build_mllm, model_config
    from eelight.models.vision import image_processor

    tok = load_tokenizer(next(o.split("=", 1)[1] for o in probe_env["overrides"] if o.startswith("data.tokenizer=")))
    model = build_mllm(model_config("ee_mllm"))
    folder = save_export(model, tmp_path / "export", tok, image_processor(model.cfg.vision, 32),
                         {"template": "probe", "image_placement": "marker"})
    text = (folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(text.replace("projector_depth: 2", "projector_depth: 3"))
    err = one_line_exit_2(capsys, ["eval", str(folder), "benchmarks=[probe]", "--no-mlflow"])
    assert "model.safetensors (against its config.yaml)" in err and "projector.net.4.weight" in err


def test_unreachable_tracking_server_is_one_line_before_training(probe_env, capsys):
    err = one_line_exit_2(capsys, ["train", "experiments/ee_mllm_tiny.yaml", *probe_env["overrides"],
                                    "name=no_server", "trainer.max_steps=1", "mlflow.tracking_uri=http://127.0.0.1:9"])
    assert "http://127.0.0.1:9: no MLflow server answers there" in err and "make mlflow-ui" in err


@pytest.mark.parametrize("storage, expected", [
    ("postgresql://eelight@127.0.0.1:9/study", "storage postgresql://eelight@127.0.0.1:9/study: "),
    ("sqlite:////nonexistent-dir/x/study.db", "cannot open the study's database"),
])
def test_unreachable_study_storage_is_one_line_before_any_trial(probe_env, tmp_path, capsys, storage, expected):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(Path("sweeps/weight_reuse.yaml").read_text() + f"\nstorage: {storage}\n")
    err = one_line_exit_2(capsys, ["sweep", str(sweep), *probe_env["overrides"], "--out-dir", str(tmp_path)])
    assert expected in err
    assert not (tmp_path / "weight_reuse" / "runs").exists()  # no trial started


@pytest.mark.parametrize("verb", ["train", "sweep"])
def test_a_gpu_config_on_a_machine_without_enough_gpus_is_one_line(probe_env, tmp_path, capsys, monkeypatch, verb):
    """Lightning's "No supported gpu backend found!" was a traceback from inside Trainer();
    a sweep now says it before its study exists (`--check` does not: a login node has no GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one GPU here, two asked for
    gpu = ["trainer.accelerator=gpu", "trainer.devices=2"]
    if verb == "train":
        argv = ["train", "experiments/ee_mllm_tiny.yaml", *probe_env["overrides"], "name=gpu", *gpu,
                f"out_dir={tmp_path}"]
    else:
        argv = ["sweep", "sweeps/weight_reuse.yaml", *probe_env["overrides"], *gpu, "--out-dir", str(tmp_path)]
    err = one_line_exit_2(capsys, argv)
    assert "trainer.accelerator=gpu with trainer.devices=2, but this machine has 1 CUDA device(s)" in err
    assert "trainer.accelerator=cpu" in err
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "weight_reuse" / "runs").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "has 0 CUDA device(s)" in one_line_exit_2(capsys, argv)


def test_eval_help_lists_every_benchmark_and_its_default_file(capsys):
    from eelight.eval.registry import BENCHMARKS, DEFAULT_FILES

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    for name in BENCHMARKS:
        assert f"  {name}: " in out
    for file, images in DEFAULT_FILES.values():
        assert f"data/probe/benchmarks/{file}" in out and (images is None or f"data/probe/benchmarks/{images}/" in out)
