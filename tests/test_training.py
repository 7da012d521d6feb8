"""The training spine on the probe: learning, freezing, resume, config errors, MLflow."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eelight.training.config import load_run_config
from eelight.training.run import train

EXPERIMENT = "experiments/ee_mllm_tiny.yaml"


def _cfg(env, *extra):
    return load_run_config([EXPERIMENT], env["overrides"] + list(extra))


def _losses(env, run_id):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{env['root']}/mlflow.db")
    return [m.value for m in client.get_metric_history(run_id, "train/loss")]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["ee_mllm", "llava", "flamingo"])
def test_instruct_training_learns_the_probe(probe_env, preset):
    cfg = _cfg(probe_env, f"model_preset={preset}", f"name={preset}_learn", "stage=instruct",
               "trainer.max_steps=150", "trainer.log_every_n_steps=5", "optim.lr=2e-3",
               "optim.projector_lr=3e-3", "optim.new_params_lr=3e-3", "optim.warmup_steps=5")
    result = train(cfg)
    losses = _losses(probe_env, result["mlflow_run_id"])
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:2]) / 2, losses
    acc = result["metrics"]["probe/accuracy/attribute"]
    assert acc > 0.4, result["metrics"]  # chance is 0.25 for each of the attribute family's questions
    assert result["global_step"] == 150


def test_align_freezes_llm_and_vision(probe_env):
    from eelight.models.mllm import build_mllm
    from eelight.training.checkpoint import init_from_checkpoint
    from eelight.training.module import parameter_groups

    cfg = _cfg(probe_env, "model_preset=ee_mllm_fresh", "name=freeze", "trainer.max_steps=8")
    before = build_mllm(cfg.model)
    groups = parameter_groups(before, "align")
    assert set(groups) == {"projector", "new"}
    assert all(not p.requires_grad for n, p in before.named_parameters()
               if n.startswith("vision.") or (n.startswith("decoder.") and ".aligner_" not in n))
    result = train(cfg)
    after = build_mllm(cfg.model)
    init_from_checkpoint(after, result["checkpoint"])
    old, new = before.state_dict(), after.state_dict()
    last = len(after.decoder.layers) - 1
    for name in old:
        frozen = name.startswith("vision.") or (name.startswith("decoder.") and ".aligner_" not in name)
        if frozen:
            assert torch.equal(old[name], new[name]), name  # frozen bytes identical
        elif name.startswith(f"decoder.layers.{last}."):
            # The last layer's visual update feeds nothing (only h_T reaches the LM head):
            # zero gradient by construction, so it is frozen.
            assert torch.equal(old[name], new[name]), name
            assert not dict(before.named_parameters())[name].requires_grad
        elif name.endswith("weight"):
            assert not torch.equal(old[name], new[name]), name  # trainable ones moved
    grads = _one_backward(after, probe_env)
    assert grads[f"decoder.layers.{last}.self_attn.aligner_v.weight"] == 0  # why it is frozen
    assert grads["decoder.layers.0.self_attn.aligner_v.weight"] > 0
    instruct = parameter_groups(after, "instruct")
    assert set(instruct) == {"projector", "new", "llm"}


def _one_backward(model, env):
    """Gradient norms of every parameter after one loss.backward() with everything trainable."""
    for p in model.parameters():
        p.requires_grad_(True)
    ids = torch.randint(3, 30, (2, 12))
    model(ids, torch.randn(2, 3, 64, 64), labels=ids).loss.backward()
    return {n: (0.0 if p.grad is None else p.grad.norm().item()) for n, p in model.named_parameters()}


def test_instruct_init_from_mismatched_checkpoint_is_an_error(probe_env):
    align = train(_cfg(probe_env, "name=handoff", "trainer.max_steps=2"))
    with pytest.raises(ValueError, match=r"projector\.net\.4\.weight"):
        train(_cfg(probe_env, "name=handoff", "stage=instruct", "model.projector_depth=3",
                   f"init_from={align['checkpoint']}", "trainer.max_steps=2"))
    with pytest.raises(FileNotFoundError, match="init_from=.*nope.ckpt does not exist"):
        train(_cfg(probe_env, "name=handoff2", "stage=instruct", "init_from=/nope.ckpt"))


def test_mlflow_store_holds_params_metrics_and_config(probe_env):
    import mlflow

    result = train(_cfg(probe_env, "name=tracked", "trainer.max_steps=12", "trainer.log_every_n_steps=2"))
    mlflow.set_tracking_uri(f"sqlite:///{probe_env['root']}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["eelight"], filter_string="tags.mlflow.runName = 'tracked/align'")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["params.model.aligner"] == "reuse" and run["params.trainer.max_steps"] == "12"
    # the sizes of the model trained (the backbone folders' config.json), not the dataclass defaults
    llm = json.loads((Path(_cfg(probe_env).model.llm.path) / "config.json").read_text())
    vision = json.loads((Path(_cfg(probe_env).model.vision.path) / "config.json").read_text())["vision_config"]
    assert run["params.model.llm.vocab_size"] == str(llm["vocab_size"]) != "128"
    assert run["params.model.vision.image_size"] == str(vision["image_size"]) == "64"
    hf_names = {"llm": {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers", "vocab_size": "vocab_size",
                        "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads",
                        "intermediate_size": "intermediate_size", "head_dim": "head_dim",
                        "max_positions": "max_position_embeddings", "rms_norm_eps": "rms_norm_eps",
                        "tie_embeddings": "tie_word_embeddings"},
                "vision": {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers", "num_heads":
                           "num_attention_heads", "intermediate_size": "intermediate_size",
                           "image_size": "image_size", "patch_size": "patch_size"}}
    for part, hf in (("llm", llm), ("vision", vision)):  # every size param is the checkpoint's
        for ours, theirs in hf_names[part].items():
            assert run[f"params.model.{part}.{ours}"] == str(hf[theirs]), (part, ours)
    assert run["params.model.llm.rope_theta"] == str(llm["rope_parameters"]["rope_theta"])
    saved = (Path(result["checkpoint"]).parent / "config.yaml").read_text()
    assert f"vocab_size: {llm['vocab_size']}" in saved
    assert run["metrics.train/loss"] > 0 and "metrics.throughput/samples_per_s" in runs.columns
    assert run["metrics.val/loss"] > 0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result["mlflow_run_id"])}
    assert {"config.yaml", "result.json"} <= artifacts


def _cli(*args, **kw):
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.Popen([sys.executable, "-m", "eelight.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


@pytest.mark.parametrize(
    "override,expected",
    [("trainer.max_stepz=3", "'trainer.max_stepz'"),
     ("model.aligner=maybe", "model.aligner='maybe' is not allowed; choose one of ['reuse', 'fresh', 'none', 'mlp']"),
     ("data.train_shards=/no/such-{0..1}.tar", "shard /no/such-0.tar does not exist")],
)
@pytest.mark.slow
def test_cli_bad_override_exits_with_one_line(override, expected):
    proc = _cli("train", EXPERIMENT, override)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("eelight: error:")]
    assert len(lines) == 1 and expected in lines[0], err


@pytest.mark.slow
def test_sigkill_then_rerun_resumes(probe_env):
    from eelight.training.checkpoint import read_checkpoint

    args = ["train", EXPERIMENT, *probe_env["overrides"], "name=killed", "trainer.max_steps=60",
            "trainer.ckpt_every_n_steps=10", "data.val_shards=null"]
    ckpt = probe_env["root"] / "runs" / "killed" / "align" / "last.ckpt"
    proc = _cli(*args, start_new_session=True)
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = read_checkpoint(ckpt)["global_step"]
    assert 10 <= killed_at < 60
    run_id = (ckpt.parent / "mlflow_run_id").read_text()
    rerun = _cli(*args)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-2000:]
    final = read_checkpoint(ckpt)
    assert final["global_step"] == 60
    result = json.loads((ckpt.parent / "result.json").read_text())
    assert result["resumed_from_step"] == killed_at
    optimizer_steps = {int(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert optimizer_steps == {60}  # Adam's step count is continuous across the kill
    assert (ckpt.parent / "mlflow_run_id").read_text() == run_id  # the same MLflow run continues
    changed = _cli(*args, "optim.lr=0.5", "data.image_placement=start")  # not the run it resumes
    _, err = changed.communicate(timeout=300)
    assert changed.returncode == 2
    assert "data.image_placement: 'marker' -> 'start'; optim.lr: 0.001 -> 0.5" in err and "new name=" in err


def test_nan_loss_stops_with_the_step_named_and_keeps_the_last_checkpoint(probe_env):
    import re

    from eelight.training.distributed import checkpoint_step

    # An absurd learning rate without clipping: the projector's output overflows float32.
    cfg = _cfg(probe_env, "name=nan", "trainer.max_steps=40", "trainer.ckpt_every_n_steps=1",
               "optim.projector_lr=1e30", "optim.warmup_steps=1", "trainer.gradient_clip_val=null")
    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf) at step \d+.*last\.ckpt\) is kept") as err:
        train(cfg)
    step = int(re.search(r"at step (\d+)", str(err.value)).group(1))
    assert step >= 1
    assert checkpoint_step(cfg.run_dir / "last.ckpt") == step  # the state before the bad step, kept


def test_progress_lines_on_stderr(probe_env, capsys):
    train(_cfg(probe_env, "name=progress", "trainer.max_steps=4", "trainer.progress_every_s=0.000001",
               "data.val_shards=null"))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[train progress/align]")]
    assert [line.split()[3] for line in lines] == ["2/4", "3/4", "4/4"]  # from the second step on
    assert lines[-1].endswith("samples/s, 0 s left") and " loss " in lines[-1]


def test_samples_trained_counts_the_partial_last_batch_of_each_pass(probe_env):
    """A 40-sample subset in batches of 32 is a batch of 32 then one of 8, pass after pass:
    3 steps train on 32 + 8 + 32 samples, not 3 x 32 (the study's compute axis counts them)."""
    result = train(_cfg(probe_env, "name=partial", "trainer.max_steps=3", "data.subset=40", "data.val_shards=null"))
    assert result["global_step"] == 3 and result["samples_trained"] == 32 + 8 + 32


def test_a_run_saved_by_an_earlier_eelight_resumes(probe_env):
    """Its config.yaml lacks keys added since and has the dataclass default sizes (the model
    came from the backbone folders): neither is a change of config."""
    import yaml

    first = train(_cfg(probe_env, "name=older", "trainer.max_steps=2", "data.val_shards=null"))
    saved = Path(first["checkpoint"]).parent / "config.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["model"]["blind"], old["model"]["visual_pool"], old["data"]["system_prompt"]
    old["model"]["llm"].update(hidden_size=64, num_layers=2, vocab_size=128)  # as written before resolving
    saved.write_text(yaml.safe_dump(old))
    again = train(_cfg(probe_env, "name=older", "trainer.max_steps=4", "data.val_shards=null"))
    assert again["resumed_from_step"] == 2 and again["global_step"] == 4
    assert again["samples_trained"] == 2 * 32  # since the resume
    with pytest.raises(ValueError, match=r"model.aligner: 'reuse' -> 'fresh'"):
        train(_cfg(probe_env, "name=older", "trainer.max_steps=6", "model.aligner=fresh", "data.val_shards=null"))


def test_a_checkpoint_is_written_after_its_step_is_logged(probe_env):
    """A kill during or just after a save must not lose the saved step's metric points: when
    step k's checkpoint is written, MLflow already holds train/loss for steps 1..k."""
    import lightning as L

    seen = []

    class Probe(L.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            run_id = trainer.logger.run_id
            seen.append((checkpoint["global_step"], len(_losses(probe_env, run_id))))

    result = train(_cfg(probe_env, "name=flushed", "trainer.max_steps=7", "trainer.ckpt_every_n_steps=3",
                        "trainer.log_every_n_steps=1", "data.val_shards=null"), callbacks=[Probe()])
    assert [step for step, _ in seen] == [3, 6, 7]  # the end too: 7 is not a multiple of 3
    assert all(points == step for step, points in seen), seen
    from eelight.training.checkpoint import read_checkpoint

    assert read_checkpoint(result["checkpoint"])["global_step"] == 7


def test_one_run_reads_each_backbone_config_once(probe_env, monkeypatch):
    """The model is resolved once per run: a resumed `train` (sizes for params, config.yaml,
    the resume check and the build) reads the LLM's and the tower's config.json once each."""
    from eelight.models import hf_loading

    train(_cfg(probe_env, "name=resolve_once", "trainer.max_steps=1", "data.val_shards=null"))
    reads = []
    real = hf_loading.read_config
    monkeypatch.setattr(hf_loading, "read_config", lambda folder, *a: reads.append(str(folder)) or real(folder, *a))
    cfg = _cfg(probe_env, "name=resolve_once", "trainer.max_steps=2", "data.val_shards=null")
    assert train(cfg)["resumed_from_step"] == 1
    assert sorted(reads) == sorted([cfg.model.llm.path, cfg.model.vision.path]), reads
