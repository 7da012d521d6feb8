"""Two nodes on one machine: two `torchrun` agents (node ranks 0 and 1, one process each)
meeting on 127.0.0.1, as on two hosts. DDP and FSDP2 with `trainer.num_nodes=2` train exactly
as one process with the same global batch (the loss at every step), and an FSDP2 run resumes
from the sharded checkpoint both nodes wrote (issue 14, must-show 5).

Same data by construction: 4 shards of 8 samples, no shuffling; node r reads shards r and r+2
(WebDataset's split by node), so global step 1 is shards 0+1 and step 2 shards 2+3, which is
what one process with batch 16 reads."""

import json
import os
import subprocess
import sys

import mlflow
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow
STEPS = 4


@pytest.fixture(scope="module")
def eight_per_shard(probe_env, tmp_path_factory):
    from eelight.data.probe import build_probe

    root = tmp_path_factory.mktemp("two_nodes")
    build_probe(str(root / "probe"), n_train=32, n_eval=4, shard_size=8, families=["attribute"])
    overrides = [o for o in probe_env["overrides"] if not o.startswith(("data.", "out_dir", "mlflow."))]
    return root, overrides + [
        f"data.tokenizer={probe_env['root']}/backbones/llm", f"data.train_shards={root}/probe/train-{{000000..000003}}.tar",
        "data.val_shards=null", "data.shuffle=0", "data.num_workers=0", f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db",
        "trainer.log_every_n_steps=1", "optim.warmup_steps=1", "model_preset=ee_mllm_fresh"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def _losses(root, result) -> dict[int, float]:
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    return {m.step: m.value for m in client.get_metric_history(result["mlflow_run_id"], "train/loss")}


def _one_process(root, overrides) -> dict:
    cmd = [sys.executable, "-m", "eelight.cli", "train", "experiments/ee_mllm_tiny.yaml", *overrides,
           f"out_dir={root}/runs", "name=one", "data.batch_size=16", f"trainer.max_steps={STEPS}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((root / "runs" / "one" / "align" / "result.json").read_text())


def _two_nodes(root, overrides, name, *extra) -> dict:
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
         "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "eelight.cli", "train",
         "experiments/ee_mllm_tiny.yaml", *overrides, f"out_dir={root}/runs", f"name={name}", "data.batch_size=8",
         "trainer.num_nodes=2", "trainer.devices=1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()) for rank in (0, 1)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
    return json.loads((root / "runs" / name / "align" / "result.json").read_text())


@pytest.fixture(scope="module")
def reference(eight_per_shard):
    root, overrides = eight_per_shard
    result = _one_process(root, overrides)
    assert result["world_size"] == 1 and result["global_step"] == STEPS
    return _losses(root, result)


def _assert_same(losses: dict[int, float], reference: dict[int, float], steps) -> None:
    for step in steps:
        assert losses[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step


def test_two_node_ddp_trains_as_one_process_with_the_global_batch(eight_per_shard, reference):
    root, overrides = eight_per_shard
    result = _two_nodes(root, overrides, "ddp", "trainer.strategy=ddp", f"trainer.max_steps={STEPS}")
    assert result["world_size"] == 2 and result["global_step"] == STEPS
    assert sorted(reference) == list(range(STEPS))  # logged at steps 0..3 (Lightning counts from 0)
    _assert_same(_losses(root, result), reference, range(STEPS))
    assert reference[STEPS - 1] < reference[0]  # it trains: the comparison is not of constants


def test_two_node_fsdp_matches_one_process_and_resumes_from_the_sharded_checkpoint(eight_per_shard, reference):
    from eelight.training.distributed import checkpoint_step

    root, overrides = eight_per_shard
    fsdp = ["trainer.strategy=fsdp", "trainer.ckpt_every_n_steps=2"]
    first = _two_nodes(root, overrides, "fsdp", *fsdp, "trainer.max_steps=2")
    assert first["world_size"] == 2 and 0.4 < first["shard_fraction"] < 0.6  # each node holds half
    ckpt = root / "runs" / "fsdp" / "align" / "last.ckpt"
    assert ckpt.is_dir() and checkpoint_step(ckpt) == 2
    assert len(list(ckpt.glob("*.distcp"))) == 2  # one shard file written by each node
    # The same command with more steps resumes on both nodes from the sharded checkpoint: model,
    # optimiser and schedule restored, so steps 3-4 are one process's steps 3-4 (a resumed run
    # restarts the unshuffled stream at shard 0, as the uninterrupted run's second pass does).
    resumed = _two_nodes(root, overrides, "fsdp", *fsdp, f"trainer.max_steps={STEPS}")
    assert resumed["resumed_from_step"] == 2 and resumed["global_step"] == STEPS
    assert checkpoint_step(ckpt) == STEPS
    _assert_same(_losses(root, resumed), reference, range(STEPS))
