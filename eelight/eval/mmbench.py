"""MMBench (dev) from VLMEvalKit's TSV, scored with CircularEval.

Columns: `index, question, hint, A, B, C, D, answer, category, l2-category` and a base64
`image` (options may be missing). A file that holds the rotations already has rows with
`index + k * 1_000_000`; otherwise they are made here: each question is asked once per
rotation of its options (n options -> n passes, the answer letter moving with its text).
A question counts as right only if every pass is right (VLMEvalKit and lmms-eval group by
`index % 1e6`). Accuracy overall and per `l2-category`, over questions.
"""

from __future__ import annotations

import base64
import binascii
import csv
from pathlib import Path

from eelight.data.prompts import LETTERS, multiple_choice
from eelight.eval.base import BenchmarkError, Evaluator, Item, Scored, required
from eelight.eval.metrics import CategoryScore, parse_option

ROTATION = 1_000_000
COLUMNS = ("index", "question", "A", "B", "answer", "image")


class MMBench(Evaluator):
    name = "mmbench"

    def load(self) -> list[Item]:
        path = Path(self.file)
        if not path.is_file():
            raise BenchmarkError(f"mmbench: TSV {path} not found; set eval.mmbench.file= to MMBench_DEV_EN.tsv")
        csv.field_size_limit(1 << 30)  # base64 images are long fields
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh, delimiter="\t"))
        except (UnicodeDecodeError, csv.Error) as exn:
            raise BenchmarkError(f"mmbench: {path} is not a UTF-8 TSV ({exn}); is it MMBench_DEV_EN.tsv?") from exn
        items, seen = [], set()
        for n, row in enumerate(rows, start=2):  # row 1 is the header
            source = f"{path}, row {n}"
            required(row, COLUMNS, self.name, source)
            try:
                index = int(float(row["index"]))
            except ValueError as exn:
                raise BenchmarkError(f"mmbench: {source}: index {row['index']!r} is not a number") from exn
            group = index % ROTATION
            if self.limit is not None and group not in seen and len(seen) >= self.limit:
                continue  # limit counts questions, with all their rotations
            seen.add(group)
            items.append(self._item(row, index, source))
        items = self._take(items)
        if not any(int(i.qid) >= ROTATION for i in items):
            items = [rot for item in items for rot in rotations(item)]
        return items

    def _item(self, row: dict, index: int, source: str) -> Item:
        options = {k: row[k] for k in LETTERS if _present(row.get(k))}
        if row["answer"] not in options:
            raise BenchmarkError(f"mmbench: {source}: answer {row['answer']!r} is not one of the options "
                                 f"{sorted(options)} (the test split has no answers: score the dev split)")
        try:
            image = base64.b64decode(row["image"], validate=True)
        except (binascii.Error, ValueError) as exn:
            raise BenchmarkError(f"mmbench: {source}: the image column is not valid base64 ({exn})") from exn
        hint = row.get("hint") if _present(row.get("hint")) else None
        category = row.get("l2-category") if _present(row.get("l2-category")) else row.get("category", "none")
        kept = {k: v for k, v in row.items() if k != "image"}
        return Item(qid=str(index), question=multiple_choice(row["question"], options, hint), category=category,
                    gold=row["answer"], image_bytes=image, choices=options, plain_question=row["question"],
                    group=str(index % ROTATION), source=source, row=kept)

    def score(self, item: Item, prediction: str) -> Scored:
        letter = parse_option(prediction, item.choices)
        return Scored(float(letter == item.gold), letter)

    def aggregate(self, items: list[Item], scored: list[Scored]) -> CategoryScore:
        """CircularEval: a question (group) scores 1 only if every one of its rows does."""
        groups: dict[str, tuple[str, bool]] = {}
        for item, s in zip(items, scored, strict=True):
            category, ok = groups.get(item.group, (item.category, True))
            groups[item.group] = (category, ok and s.score == 1.0)
        metric = CategoryScore(sorted({c for c, _ in groups.values()}))
        metric.update([float(ok) for _, ok in groups.values()], [c for c, _ in groups.values()],
                      unparsed=sum(1 for s in scored if s.parsed is None))
        return metric

    def write_rows(self, items: list[Item], predictions: list[str], path: Path) -> Path:
        path = path.with_suffix(".tsv")
        keys = list(dict.fromkeys(k for item in items for k in item.row)) + ["prediction"]
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys, delimiter="\t")
            writer.writeheader()
            for item, p in zip(items, predictions, strict=True):
                writer.writerow({**item.row, "prediction": p})
        return path


def rotations(item: Item) -> list[Item]:
    """The item once per rotation of its options (k = 0 is the item itself), rows numbered
    `index + k * 1e6` as VLMEvalKit's circular files number them."""
    letters = list(item.choices)
    texts = [item.choices[k] for k in letters]
    out = []
    for k in range(len(letters)):
        shifted = texts[k:] + texts[:k]  # option i now shows the text option i+k had
        options = dict(zip(letters, shifted, strict=True))
        gold = letters[(letters.index(item.gold) - k) % len(letters)]
        index = int(item.qid) + k * ROTATION
        row = {**item.row, **options, "index": str(index), "answer": gold}
        hint = item.row.get("hint") if _present(item.row.get("hint")) else None
        out.append(Item(qid=str(index), question=multiple_choice(item.plain_question, options, hint),
                        category=item.category, gold=gold, image_bytes=item.image_bytes, choices=options,
                        plain_question=item.plain_question, group=item.group, source=item.source, row=row))
    return out


def _present(value) -> bool:
    return value is not None and str(value).strip() not in ("", "nan", "NaN")
