"""The benchmarks by name, built from the evaluation settings."""

from __future__ import annotations

from pathlib import Path

from eelight.eval.base import BenchmarkError, Evaluator
from eelight.eval.config import EvalConfig

# name -> (question file, image folder) under eval.data_root
DEFAULT_FILES = {
    "mmbench": ("mmbench/MMBench_DEV_EN.tsv", None),
    "seed": ("seed/SEED-Bench.json", "seed/images"),
    "textvqa": ("textvqa/TextVQA_0.5.1_val.json", "textvqa/train_images"),
    "docvqa": ("docvqa/val_v1.0.json", None),
}
BENCHMARKS = ("probe", "mmbench", "seed", "textvqa", "docvqa")


def benchmark_help(data_root: str = "data/probe/benchmarks") -> str:
    """The benchmarks and where their files are expected by default (`eelight eval --help`)."""
    rows = ["probe: the run's data.val_shards (first data.val_samples images); eval.probe.file= for others"]
    for name, (file, images) in DEFAULT_FILES.items():
        inside = " (images in the TSV, base64)" if name == "mmbench" else " (images: each `image` path, from the JSON's folder)"
        where = f"{data_root}/{file}" + (f" + images in {data_root}/{images}/" if images else inside)
        rows.append(f"{name}: {where}; eval.{name}.file= / eval.{name}.images= for others")
    return "benchmarks (benchmarks=[...]; files under eval.data_root, default " + data_root + "):\n" + "\n".join(
        f"  {r}" for r in rows)


def check_names(names: list[str]) -> None:
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise BenchmarkError(f"eval.benchmarks: unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")


def make_evaluator(name: str, cfg: EvalConfig, val_shards: str | None = None, val_samples: int | None = None
                   ) -> Evaluator:
    from eelight.eval.docvqa import DocVQA
    from eelight.eval.mmbench import MMBench
    from eelight.eval.probe import Probe
    from eelight.eval.seed import SeedBench
    from eelight.eval.textvqa import TextVQA

    check_names([name])
    files = getattr(cfg, name)
    if name == "probe":
        shards = files.file or val_shards
        if not shards:
            raise BenchmarkError("probe: no shards to read; set data.val_shards= or eval.probe.file=")
        return Probe(shards, limit=cfg.limit if cfg.limit is not None else val_samples)
    default_file, default_images = DEFAULT_FILES[name]
    root = Path(cfg.data_root)
    file = files.file or str(root / default_file)
    images = files.images or (str(root / default_images) if default_images else None)
    if name == "mmbench":
        return MMBench(file, limit=cfg.limit)
    if name == "seed":
        return SeedBench(file, images, cfg.limit, protocol=cfg.seed_protocol)
    if name == "textvqa":
        return TextVQA(file, images, cfg.limit, ocr=cfg.textvqa_ocr)
    return DocVQA(file, images, cfg.limit)
