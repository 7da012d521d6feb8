"""The evaluator interface: a benchmark is one file that reads its items from a local file in
the benchmark's official format, builds each item's question, scores a prediction, and
aggregates per category. `eelight.eval.runner` asks the model; `eelight.eval.registry`
names the benchmarks.

A new benchmark = one subclass of `Evaluator` in its own file + its entry in the registry +
its test.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from eelight.errors import UserError
from eelight.eval.metrics import CategoryScore


class BenchmarkError(UserError, ValueError):
    """A benchmark file the user gave cannot be read: names the file, the row and the fix."""


@dataclass
class Item:
    qid: str  # the question's id as the file has it
    question: str  # the prompt text, without the image marker
    category: str
    gold: Any  # an option letter, or the list of gold answers
    image_path: str | None = None  # one of these two
    image_bytes: bytes | None = None
    choices: dict[str, str] = field(default_factory=dict)  # letter -> option text (multiple choice)
    plain_question: str = ""  # the question alone (likelihood protocol: the choices are ranked after it)
    group: str | None = None  # CircularEval: the rows of one question
    source: str = ""  # "file, row N": named by errors
    row: dict[str, Any] = field(default_factory=dict)  # the benchmark's row, written back with a prediction


@dataclass
class Scored:
    score: float
    parsed: str | None  # what was read from the prediction (the option letter; the answer)


class Evaluator(ABC):
    """One benchmark. Subclasses set `name`, `metric`, `protocol` and implement `load` / `score`."""

    name: ClassVar[str]
    metric: ClassVar[str] = "accuracy"  # the metric's name in results: <name>/<metric>
    protocol: str = "generate"  # or "likelihood": rank `choices` by their likelihood
    chance: float | None = None  # the score of a random guess, when the benchmark has one

    def __init__(self, file: str, images: str | None = None, limit: int | None = None) -> None:
        self.file, self.images, self.limit = file, images, limit

    @abstractmethod
    def load(self) -> list[Item]:
        """The benchmark's items, read from `self.file` (and `self.images`)."""

    @abstractmethod
    def score(self, item: Item, prediction: str) -> Scored:
        """One prediction's score and what was read from it."""

    def aggregate(self, items: list[Item], scored: list[Scored]) -> CategoryScore:
        """Per-item scores into the metric (CircularEval overrides it: a group counts once)."""
        metric = CategoryScore(sorted({i.category for i in items}))
        metric.update([s.score for s in scored], [i.category for i in items],
                      unparsed=sum(1 for s in scored if s.parsed is None))
        return metric

    def results(self, items: list[Item], scored: list[Scored]) -> dict[str, float]:
        """`<name>/<metric>`, `<name>/<metric>/<category>` and `<name>/unparsed`."""
        metric = self.aggregate(items, scored)
        values = metric.compute()
        out = {f"{self.name}/{self.metric}": values.pop("overall")}
        out.update({f"{self.name}/{self.metric}/{_key(c)}": v for c, v in values.items()})
        out[f"{self.name}/unparsed"] = float(metric.unparsed)
        return out

    def write_rows(self, items: list[Item], predictions: list[str], path: Path) -> Path:
        """The benchmark's rows with a `prediction` column (VLMEvalKit's layout), as JSON by
        default; TSV benchmarks override it."""
        rows = [{**item.row, "prediction": p} for item, p in zip(items, predictions, strict=True)]
        path = path.with_suffix(".json")
        path.write_text(json.dumps(rows, indent=1, default=str))
        return path

    # -- helpers for subclasses -------------------------------------------------------------
    def _read_json(self) -> Any:
        path = Path(self.file)
        if not path.is_file():
            raise BenchmarkError(f"{self.name}: question file {path} not found; set eval.{self.name}.file= "
                                 f"(or eval.data_root=) to where the benchmark's file is")
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exn:
            raise BenchmarkError(f"{self.name}: {path} is not valid JSON ({exn}); is it the official file?") from exn

    def _image_file(self, folder: str | Path, name: str, source: str) -> str:
        path = Path(folder) / name
        if not path.is_file():
            raise BenchmarkError(f"{self.name}: {source}: image {path} not found; set eval.{self.name}.images= "
                                 f"to the benchmark's image folder")
        return str(path)

    def _take(self, items: list[Item]) -> list[Item]:
        if not items:
            raise BenchmarkError(f"{self.name}: {self.file} has no questions to score")
        return items if self.limit is None else items[: self.limit]


def open_image(item: Item, benchmark: str) -> Image.Image:
    """The item's image as RGB; an unreadable one names the file and the row."""
    try:
        image = Image.open(io.BytesIO(item.image_bytes) if item.image_bytes is not None else item.image_path)
        return image.convert("RGB")
    except (OSError, ValueError) as exn:
        where = item.image_path or "its base64 image"
        raise BenchmarkError(f"{benchmark}: {item.source}: cannot read {where} ({exn})") from exn


def required(row: dict[str, Any], keys: tuple[str, ...], benchmark: str, source: str) -> None:
    if None in row:  # csv.DictReader puts cells past the header under None
        raise BenchmarkError(f"{benchmark}: {source}: more cells than the header has columns (a tab in a field?)")
    missing = [k for k in keys if row.get(k) is None]
    if missing:
        raise BenchmarkError(f"{benchmark}: {source}: missing field(s) {missing}; the official format has {list(keys)}")


def _key(category: str) -> str:
    """A category as an MLflow metric-name part (letters, digits, _ - . / and spaces)."""
    return "".join(c if c.isalnum() or c in "_-. " else "_" for c in str(category)).strip() or "none"
