"""DocVQA (val) from its JSON (`data[]`: `questionId, question, image, answers[]`); `image` is
relative to the JSON's folder (the official `documents/...png`) unless `eval.docvqa.images=`
names another root. Short-answer generation; ANLS with τ = 0.5, overall and per the
file's `question_types` (the first one listed) when it has them.
"""

from __future__ import annotations

from pathlib import Path

from eelight.data.prompts import short_answer
from eelight.eval.base import BenchmarkError, Evaluator, Item, Scored, required
from eelight.eval.metrics import anls

FIELDS = ("questionId", "question", "image", "answers")


class DocVQA(Evaluator):
    name = "docvqa"
    metric = "anls"

    def load(self) -> list[Item]:
        data = self._read_json()
        rows = data.get("data") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise BenchmarkError(f"docvqa: {self.file} has no `data` list; is it val_v1.0.json?")
        root = self.images or str(Path(self.file).parent)
        items = []
        for n, row in enumerate(rows[: self.limit] if self.limit is not None else rows):
            source = f"{self.file}, data[{n}]"
            if not isinstance(row, dict):
                raise BenchmarkError(f"docvqa: {source} is not an object")
            required(row, FIELDS, self.name, source)
            if not isinstance(row["answers"], list) or not row["answers"]:
                raise BenchmarkError(f"docvqa: {source}: `answers` must be a non-empty list")
            types = row.get("question_types") or ["all"]
            items.append(Item(
                qid=str(row["questionId"]), question=short_answer(row["question"]), category=str(types[0]),
                gold=[str(a) for a in row["answers"]], image_path=self._image_file(root, row["image"], source),
                plain_question=row["question"], source=source, row=row))
        return self._take(items)

    def score(self, item: Item, prediction: str) -> Scored:
        return Scored(anls(prediction, item.gold), prediction.strip())
