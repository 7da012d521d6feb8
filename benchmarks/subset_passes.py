"""Passes over a training subset, as the data-efficiency study trains (`data.subset`, batch 32,
shuffle 256, a fixed number of batches): the loader as it reads a subset now (each shard read up
to its last subset sample, the decoded examples kept after the first pass) side by side with the
way it read one before (every holding shard read whole, then `select`, every sample decoded on
every pass), in one run on the same shards. Both give the same batches (checked here, and in
tests/test_data.py); only the time differs.

    .venv/bin/python benchmarks/subset_passes.py [--probe data/probe] [--batches 280]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import webdataset as wds

from eelight.data import loader
from eelight.data.tokenizer import load_tokenizer
from eelight.models.config import VisionConfig
from eelight.models.vision import image_processor


def whole_shards(urls: str, keep_n: int, tok, proc, seed: int, shuffle: int, batch_size: int):
    """The subset pipeline before: webdataset's own stages, every holding shard read whole."""
    keep, wanted = loader.subset_keys(loader.expand_urls(urls), keep_n)
    tpl = loader.template("probe", tok, None)
    transform = loader.FastImageTransform(proc)
    return wds.DataPipeline(
        wds.SimpleShardList(list(wanted)), wds.split_by_node, wds.split_by_worker,
        wds.detshuffle(len(wanted), seed=seed), wds.tarfile_to_samples(),
        wds.select(lambda s: s["__key__"] in keep),
        wds.shuffle(shuffle, initial=min(shuffle, 100), rng=random.Random(seed)), wds.decode("pil"),
        wds.map(lambda s: loader.make_example(s, "instruct", tok, tpl, transform, 64)),
        wds.batched(batch_size, collation_fn=lambda b: loader.collate(b, tok.pad_token_id), partial=True))


def run(pipeline, batches: int) -> tuple[float, list[list[str]]]:
    """Seconds for `batches` batches over as many passes as that takes, and the batches' keys."""
    keys: list[list[str]] = []
    start = time.perf_counter()
    while len(keys) < batches:
        for batch in pipeline:
            keys.append(batch["keys"])
            if len(keys) == batches:
                break
    return time.perf_counter() - start, keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probe", default="data/probe", help="a probe folder (make demo builds data/probe)")
    parser.add_argument("--batches", type=int, default=280, help="the study's steps per trial (align + instruct)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 3000])
    args = parser.parse_args()
    probe = Path(args.probe)
    tok = load_tokenizer(probe / "tokenizer")
    proc = image_processor(VisionConfig(kind="clip"), 64)
    urls = f"{probe}/train-{{000000..000003}}.tar"
    print(f"{'subset':>6} | {'before s':>8} | {'now s':>6} | now / before | samples/s now")
    for n in args.sizes:
        before, want = run(whole_shards(urls, n, tok, proc, 0, 256, 32), args.batches)
        now, got = run(loader.make_pipeline(urls, stage="instruct", tokenizer=tok, processor=proc, batch_size=32,
                                            max_length=64, shuffle=256, seed=0, subset=n), args.batches)
        assert got == want, f"subset {n}: the two loaders gave different batches"
        print(f"{n:>6} | {before:8.2f} | {now:6.2f} | {now / before:12.2f} | {32 * args.batches / now:8.0f}")


if __name__ == "__main__":
    main()
