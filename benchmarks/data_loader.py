"""Data-loader throughput: shards of 336 px (or --size) JPEGs -> normalised tensors + tokens + collated
batches, with 0, 1 and 2 DataLoader workers, side by side with the raw ceiling measured in
the same run (PIL decode of the same JPEGs alone, one core).

    .venv/bin/python benchmarks/data_loader.py [--samples 2000]
"""

from __future__ import annotations

import argparse
import io
import random
import tempfile
import time
from pathlib import Path

import webdataset as wds
from PIL import Image

from eelight.data.families import conversation, scene
from eelight.data.loader import make_pipeline
from eelight.data.probe import corpus_words
from eelight.data.shards import Sample, write_shards
from eelight.data.tokenizer import build_word_tokenizer
from eelight.models.config import VisionConfig
from eelight.models.vision import image_processor


def build(root: Path, n: int, size: int) -> str:
    def samples():
        for i in range(n):
            s = scene("attribute", i, 0, size)
            yield Sample(f"b{i:07d}", s.image, caption=s.caption, conversations=conversation(s, random.Random(i)),
                         image_ext="jpg")

    split = write_shards(samples(), root, "bench", max_count=max(1, n // 4))
    build_word_tokenizer(corpus_words(), root / "tok")
    return str(root / split["pattern"])


def raw_ceiling(urls: str) -> float:
    """PIL decode alone (tar reading included), one process."""
    from eelight.data.loader import expand_urls

    start, n = time.perf_counter(), 0
    for sample in wds.DataPipeline(wds.SimpleShardList(expand_urls(urls)), wds.tarfile_to_samples()):
        Image.open(io.BytesIO(sample["jpg"])).convert("RGB").load()
        n += 1
    return n / (time.perf_counter() - start)


def pipeline_rate(urls: str, tok, proc, workers: int, batch_size: int, host_float: bool) -> float:
    """Batches as the loader ships them (uint8 pixels, normalised later on the model's device),
    or, with host_float, also normalised to float32 on the host in the consuming process."""
    from eelight.data.image import FastImageTransform

    transform = FastImageTransform(proc)
    ds = make_pipeline(urls, stage="instruct", tokenizer=tok, processor=proc, batch_size=batch_size, max_length=64)
    loader = wds.WebLoader(ds, batch_size=None, num_workers=workers)
    it = iter(loader)
    first = next(it)  # worker start-up is not throughput
    start, n = time.perf_counter(), 0
    for batch in it:
        if host_float:
            transform.normalize(batch["pixel_values"])
        n += len(batch["keys"])
    assert first["pixel_values"].shape[-1] == proc.crop_size["height"]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=336, help="image side in pixels")
    args = parser.parse_args()
    from eelight.data.tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        urls = build(Path(tmp), args.samples, args.size)
        tok = load_tokenizer(Path(tmp) / "tok")
        proc = image_processor(VisionConfig(kind="clip"), args.size)
        ceiling = raw_ceiling(urls)
        print(f"raw ceiling (PIL decode only, 1 core): {ceiling:8.0f} samples/s")
        for host_float in (False, True):
            what = "+ float32 normalise on host" if host_float else "uint8 batches (normalised on device)"
            for workers in (0, 1, 2):
                rate = pipeline_rate(urls, tok, proc, workers, args.batch_size, host_float)
                cores = max(1, workers)
                print(f"{what:38s} {workers} workers: {rate:6.0f} samples/s "
                      f"({rate / cores:.0f}/s per core, {rate / ceiling:.2f}x the decode ceiling)")


if __name__ == "__main__":
    main()
