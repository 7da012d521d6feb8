"""The synthetic probe as a benchmark: four plain questions (shape, colour, position, count)
about each of the first `limit` held-out probe images (webdataset shards), answered by
greedy generation and scored by exact match of the answer words. Chance is 25% per type.
(`data_pipelines/probe_benchmarks.py` writes the same held-out images in the four
benchmarks' formats, to score a probe model through their paths.)
"""

from __future__ import annotations

import json

from eelight.data.probe import CHANCE, QUESTIONS
from eelight.eval.base import BenchmarkError, Evaluator, Item, Scored

KINDS = sorted(QUESTIONS)


class Probe(Evaluator):
    name = "probe"
    chance = sum(CHANCE.values()) / len(CHANCE)

    def load(self) -> list[Item]:
        """`limit` counts images here (4 questions each)."""
        import webdataset as wds

        from eelight.data.loader import expand_urls

        urls = expand_urls(self.file)
        items: list[Item] = []
        images = 0
        for sample in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
            if self.limit is not None and images >= self.limit:
                break
            source = f"{sample['__url__']}, key {sample['__key__']}"
            try:
                answers = json.loads(sample["json"])["probe"]
            except (KeyError, ValueError) as exn:
                raise BenchmarkError(f"probe: {source} has no probe answers: not a probe eval shard "
                                     "(point eval.probe.file / data.val_shards at the probe's eval shards)") from exn
            image = next((sample[e] for e in ("png", "jpg") if e in sample), None)
            if image is None:
                raise BenchmarkError(f"probe: {source} has no png/jpg image")
            images += 1
            for kind in KINDS:
                items.append(Item(qid=f"{sample['__key__']}/{kind}", question=QUESTIONS[kind], category=kind,
                                  gold=answers[kind], image_bytes=image, plain_question=QUESTIONS[kind],
                                  source=source, row={"key": sample["__key__"], "kind": kind,
                                                      "question": QUESTIONS[kind], "answer": answers[kind]}))
        if not items:
            raise BenchmarkError(f"probe: {self.file} has no samples")
        return items

    def score(self, item: Item, prediction: str) -> Scored:
        said = " ".join(prediction.split())
        return Scored(float(said == item.gold), said)
