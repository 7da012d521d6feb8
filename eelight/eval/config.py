"""Evaluation settings (`eval.*` in a run config, and `eelight eval`'s key=value overrides).

Benchmark files default to the layout `data_pipelines/probe_benchmarks.py` writes under
`eval.data_root`, which is the official files' names in one folder per benchmark:

    <data_root>/mmbench/MMBench_DEV_EN.tsv
    <data_root>/seed/SEED-Bench.json           + seed/images/<data_id>
    <data_root>/textvqa/TextVQA_0.5.1_val.json + textvqa/train_images/<image_id>.jpg
    <data_root>/docvqa/val_v1.0.json           + docvqa/documents/... (as `image` says)

`eval.<benchmark>.file` / `.images` point at files anywhere else. The probe benchmark reads
the run's `data.val_shards` (first `data.val_samples` images) unless `eval.probe.file` is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eelight.config_rules import at_least, check_fields, one_of

SEED_PROTOCOLS = ("likelihood", "generation")


@dataclass
class BenchmarkFiles:
    file: str | None = None  # the question file (None: the default under eval.data_root)
    images: str | None = None  # the image folder (None: the default)


@dataclass
class EvalConfig:
    benchmarks: list[str] = field(default_factory=list)  # scored after an instruct stage and by `eelight eval`
    data_root: str = "data/probe/benchmarks"
    limit: int | None = at_least(1, None)  # first N questions of each benchmark (probe: images); None = all
    batch_size: int = at_least(1, 16)
    max_new_tokens: int = at_least(1, 16)
    seed_protocol: str = one_of(SEED_PROTOCOLS, "likelihood")  # likelihood (SEED's official) | generation (LLaVA's)
    textvqa_ocr: str | None = None  # None | item (the rows' own ocr_tokens) | a Rosetta OCR file
    probe: BenchmarkFiles = field(default_factory=BenchmarkFiles)
    mmbench: BenchmarkFiles = field(default_factory=BenchmarkFiles)
    seed: BenchmarkFiles = field(default_factory=BenchmarkFiles)
    textvqa: BenchmarkFiles = field(default_factory=BenchmarkFiles)
    docvqa: BenchmarkFiles = field(default_factory=BenchmarkFiles)

    def __post_init__(self) -> None:
        check_fields(self, "eval")
