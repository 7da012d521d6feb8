"""TextVQA (val) from its JSON (`data[]`: `question_id, image_id, question, answers[10]`) and
image folder (`<images>/<image_id>.jpg`, the official `train_images/`). Short-answer
generation; VQA accuracy (EvalAI normalisation, `eelight.eval.metrics.vqa_accuracy`).

OCR tokens in the prompt (LLaVA-1.5's protocol, the one its published figure uses):
`eval.textvqa_ocr=item` takes each row's own `ocr_tokens`; `eval.textvqa_ocr=PATH` reads a file
in Rosetta's layout (`data[]` with `image_id, ocr_tokens`). Unset: no OCR tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from eelight.data.prompts import short_answer
from eelight.eval.base import BenchmarkError, Evaluator, Item, Scored, required
from eelight.eval.metrics import normalize_vqa, vqa_accuracy

FIELDS = ("question_id", "image_id", "question", "answers")


class TextVQA(Evaluator):
    name = "textvqa"

    def __init__(self, file: str, images: str | None = None, limit: int | None = None,
                 ocr: str | None = None) -> None:
        super().__init__(file, images, limit)
        self.ocr = ocr

    def _ocr_tokens(self) -> dict[str, list[str]]:
        if self.ocr in (None, "", "item"):
            return {}
        path = Path(self.ocr)
        try:
            rows = json.loads(path.read_text())["data"]
            return {str(r["image_id"]): list(r["ocr_tokens"]) for r in rows}
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exn:
            raise BenchmarkError(f"textvqa: OCR file {path} is not readable as Rosetta's layout "
                                 f"(data[] with image_id, ocr_tokens): {exn}") from exn

    def load(self) -> list[Item]:
        data = self._read_json()
        rows = data.get("data") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise BenchmarkError(f"textvqa: {self.file} has no `data` list; is it TextVQA_0.5.1_val.json?")
        ocr = self._ocr_tokens()
        images = self.images or "."
        items = []
        for n, row in enumerate(rows[: self.limit] if self.limit is not None else rows):
            source = f"{self.file}, data[{n}]"
            if not isinstance(row, dict):
                raise BenchmarkError(f"textvqa: {source} is not an object")
            required(row, FIELDS, self.name, source)
            if not isinstance(row["answers"], list) or len(row["answers"]) != 10:
                raise BenchmarkError(f"textvqa: {source}: `answers` must be the 10 annotators' answers")
            tokens = None
            if self.ocr == "item":
                tokens = [str(t) for t in row.get("ocr_tokens") or []]
            elif self.ocr:
                tokens = ocr.get(str(row["image_id"]), [])
            items.append(Item(
                qid=str(row["question_id"]), question=short_answer(row["question"], tokens),
                category="all", gold=[str(a) for a in row["answers"]],
                image_path=self._image_file(images, f"{row['image_id']}.jpg", source),
                plain_question=row["question"], source=source, row=row))
        return self._take(items)

    def score(self, item: Item, prediction: str) -> Scored:
        return Scored(vqa_accuracy(prediction, item.gold), normalize_vqa(prediction))
