"""The synthetic probe as a benchmark: each held-out scene's questions asked in plain form
(webdataset shards, one split per family), answered by greedy generation and scored by exact
match of the answer words; accuracy overall and per family. `limit` counts scenes per family.
(`data_pipelines/probe_benchmarks.py` writes the same held-out scenes in the four benchmarks'
formats, to score a probe model through their paths.)
"""

from __future__ import annotations

import json
from collections import Counter

from eelight.eval.base import BenchmarkError, Evaluator, Item, Scored


def probe_scenes(urls: str, limit: int | None = None):
    """(key, image bytes, family, questions) of the first `limit` scenes of each family."""
    import webdataset as wds

    from eelight.data.loader import expand_urls

    taken: Counter[str] = Counter()
    for sample in wds.DataPipeline(wds.SimpleShardList(expand_urls(urls)), wds.tarfile_to_samples()):
        source = f"{sample['__url__']}, key {sample['__key__']}"
        try:
            meta = json.loads(sample["json"])["probe"]
            family, questions = meta["family"], meta["questions"]
        except (KeyError, ValueError, TypeError) as exn:
            raise BenchmarkError(f"probe: {source} has no probe questions: not a probe eval shard of this version "
                                 "(rebuild with data_pipelines/synthetic_probe.py, or point data.val_shards / "
                                 "eval.probe.file at its eval shards)") from exn
        if limit is not None and taken[family] >= limit:
            continue
        image = next((sample[e] for e in ("png", "jpg") if e in sample), None)
        if image is None:
            raise BenchmarkError(f"probe: {source} has no png/jpg image")
        taken[family] += 1
        yield sample["__key__"], image, family, questions, source


class Probe(Evaluator):
    name = "probe"

    def load(self) -> list[Item]:
        items: list[Item] = []
        for key, image, family, questions, source in probe_scenes(self.file, self.limit):
            for q in questions:
                items.append(Item(qid=f"{key}/{q['kind']}", question=q["text"], category=family, gold=q["answer"],
                                  image_bytes=image, plain_question=q["text"], source=source,
                                  row={"key": key, "family": family, "kind": q["kind"], "question": q["text"],
                                       "answer": q["answer"]}))
        if not items:
            raise BenchmarkError(f"probe: {self.file} has no samples")
        return items

    def results(self, items: list[Item], scored: list[Scored]) -> dict[str, float]:
        """The base metrics, and for a family asked several kinds of question (attribute:
        shape, colour, position, count) each kind's accuracy, `probe/accuracy/<family>/<kind>`:
        a family's mean can hide a kind at chance."""
        out = super().results(items, scored)
        by_kind: dict[tuple[str, str], list[float]] = {}
        for item, s in zip(items, scored, strict=True):
            by_kind.setdefault((item.category, item.row["kind"]), []).append(s.score)
        families = Counter(family for family, _ in by_kind)
        for (family, kind), scores in sorted(by_kind.items()):
            if families[family] > 1:
                out[f"{self.name}/{self.metric}/{family}/{kind}"] = sum(scores) / len(scores)
        return out

    def score(self, item: Item, prediction: str) -> Scored:
        said = " ".join(prediction.split())
        return Scored(float(said == item.gold), said)
