"""Ranks and workers: exactly-once epochs on divisible shard counts; equal epochs (and a
2-process DDP run that finishes) on an uneven shard count."""

import json
import os
import subprocess
import sys

import pytest

from eelight.data.loader import make_loader, make_pipeline
from eelight.data.probe import build_probe
from eelight.data.tokenizer import load_tokenizer
from eelight.models.config import VisionConfig
from eelight.models.vision import image_processor


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    build_probe(str(root / "four"), n_train=80, n_eval=4, image_size=32, shard_size=20)  # 4 shards
    build_probe(str(root / "three"), n_train=60, n_eval=4, image_size=32, shard_size=20, seed=1)  # 3 shards
    return root


def _rank_keys(monkeypatch, urls, rank, world, workers, epoch_batches=None, **kw):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    tok = load_tokenizer(str(urls).split("/train-")[0] + "/tokenizer")
    ds = make_pipeline(urls, stage="align", tokenizer=tok, processor=image_processor(VisionConfig(), 32),
                       batch_size=4, **kw)
    loader = make_loader(ds, workers, epoch_batches)
    return [[k for k in batch["keys"]] for batch in loader]


def test_two_ranks_two_workers_see_every_sample_once(shards, monkeypatch):
    urls = f"{shards}/four/train-{{000000..000003}}.tar"
    seen = []
    for rank in range(2):
        batches = _rank_keys(monkeypatch, urls, rank, 2, workers=2, shuffle=10, seed=rank)
        seen += [k for b in batches for k in b]
    assert len(seen) == 80 and len(set(seen)) == 80


def test_uneven_shards_give_equal_epochs_when_resampled(shards, monkeypatch):
    urls = f"{shards}/three/train-{{000000..000002}}.tar"
    plain = [sum(map(len, _rank_keys(monkeypatch, urls, r, 2, workers=0))) for r in range(2)]
    assert plain[0] != plain[1]  # split_by_node alone: 2 shards vs 1 -> DDP would hang
    lengths = [len(_rank_keys(monkeypatch, urls, r, 2, workers=2, resampled=True, epoch_batches=6))
               for r in range(2)]
    assert lengths == [6, 6]


@pytest.mark.slow
def test_ddp_two_processes_on_uneven_shards_finish(shards, probe_env):
    out = shards / "ddp"
    overrides = [o for o in probe_env["overrides"] if not o.startswith(("data.train_shards", "out_dir"))]
    cmd = [sys.executable, "-m", "eelight.cli", "train", "experiments/ee_mllm_tiny.yaml", *overrides,
           f"data.train_shards={shards}/three/train-{{000000..000002}}.tar", f"out_dir={out}", "name=ddp",
           "trainer.devices=2", "trainer.strategy=ddp", "data.resampled=true", "data.epoch_batches=3",
           "trainer.max_steps=8", "trainer.ckpt_every_n_steps=4", "data.val_shards=null", "data.batch_size=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stderr + proc.stdout  # Lightning's DDP banner
    result = json.loads((out / "ddp" / "align" / "result.json").read_text())
    assert result["global_step"] == 8
