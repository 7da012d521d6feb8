"""FSDP2 (ModelParallelStrategy, one wrap unit per decoder layer) with 2 CPU processes."""

import json
import os
import subprocess
import sys

import pytest


def _train(probe_env, out, max_steps):
    overrides = [o for o in probe_env["overrides"] if not o.startswith("out_dir")]
    cmd = [sys.executable, "-m", "eelight.cli", "train", "experiments/ee_mllm_tiny.yaml", *overrides,
           f"out_dir={out}", "name=fsdp", "model_preset=ee_mllm_fresh", "trainer.devices=2",
           "trainer.strategy=fsdp", "data.resampled=true", "data.epoch_batches=4", f"trainer.max_steps={max_steps}",
           "trainer.ckpt_every_n_steps=3", "data.val_shards=null", "data.batch_size=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "fsdp" / "align" / "result.json").read_text())


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_shards_checkpoints_and_resumes(probe_env, tmp_path):
    from eelight.training.distributed import checkpoint_step

    result = _train(probe_env, tmp_path, 6)
    assert result["world_size"] == 2 and result["global_step"] == 6
    assert 0.4 < result["shard_fraction"] < 0.6  # each rank holds about half of every parameter
    ckpt = tmp_path / "fsdp" / "align" / "last.ckpt"
    assert ckpt.is_dir() and (ckpt / "meta.pt").is_file() and list(ckpt.glob("*.distcp"))
    assert not (ckpt.parent / "last.ckpt.tmp").exists()  # written to .tmp, then renamed
    assert checkpoint_step(ckpt) == 6
    resumed = _train(probe_env, tmp_path, 9)  # same command, more steps: resumes from step 6
    assert resumed["resumed_from_step"] == 6 and result["resumed_from_step"] == 0
    assert resumed["global_step"] == 9 and checkpoint_step(ckpt) == 9


@pytest.mark.slow
def test_an_instruct_stage_starts_from_a_sharded_align_checkpoint(probe_env, tmp_path):
    """init_from takes an FSDP stage's last.ckpt/ folder as it is (a sweep's trial hands it on):
    merged in memory to what `fabric consolidate` writes, tensor for tensor."""
    import torch

    from eelight.errors import CheckpointError
    from eelight.training.checkpoint import read_checkpoint

    _train(probe_env, tmp_path, 3)
    ckpt = tmp_path / "fsdp" / "align" / "last.ckpt"
    merged = tmp_path / "merged.ckpt"
    subprocess.run([sys.executable, "-m", "lightning.fabric.utilities.consolidate_checkpoint", str(ckpt),
                    "--output_file", str(merged)], check=True, capture_output=True)
    ours, reference = read_checkpoint(ckpt)["state_dict"], torch.load(merged, weights_only=False)["state_dict"]
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
    overrides = [o for o in probe_env["overrides"] if not o.startswith("out_dir")]
    cmd = [sys.executable, "-m", "eelight.cli", "train", "experiments/ee_mllm_tiny.yaml",
           "experiments/stages/instruct.yaml", *overrides, f"out_dir={tmp_path}", "name=fsdp",
           "model_preset=ee_mllm_fresh", f"init_from={ckpt}", "trainer.max_steps=2", "data.batch_size=8",
           "eval.benchmarks=[]", "data.val_shards=null"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "fsdp" / "instruct" / "result.json").read_text())["global_step"] == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a sharded checkpoint"):
        read_checkpoint(tmp_path / "empty")
