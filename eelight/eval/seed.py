"""SEED-Bench (v1) from its JSON (`questions[]`: `question_id, question_type_id, data_id,
choice_a..choice_d, answer`) and image folder (`<images>/<data_id>`); image questions only
(types 1-9). Two protocols, named in the results:

- `likelihood` (the official one): each choice is scored by the mean log-likelihood of its
  tokens as the answer to the question alone; the most likely choice is the answer.
- `generation` (LLaVA's): the question with its options, answered by letter, matched.
Accuracy overall and per question type.
"""

from __future__ import annotations

from eelight.data.prompts import LETTERS, multiple_choice
from eelight.eval.base import BenchmarkError, Evaluator, Item, Scored, required
from eelight.eval.metrics import parse_option

IMAGE_TYPES = range(1, 10)
FIELDS = ("question_id", "question_type_id", "data_id", "question", "answer",
          "choice_a", "choice_b", "choice_c", "choice_d")
PROTOCOLS = ("likelihood", "generation")


class SeedBench(Evaluator):
    name = "seed"
    chance = 0.25

    def __init__(self, file: str, images: str | None = None, limit: int | None = None,
                 protocol: str = "likelihood") -> None:
        super().__init__(file, images, limit)
        if protocol not in PROTOCOLS:
            raise BenchmarkError(f"eval.seed_protocol={protocol!r}; choose one of {list(PROTOCOLS)}")
        self.protocol = protocol

    def load(self) -> list[Item]:
        data = self._read_json()
        questions = data.get("questions") if isinstance(data, dict) else None
        if not isinstance(questions, list):
            raise BenchmarkError(f"seed: {self.file} has no `questions` list; is it SEED-Bench.json?")
        names = {v: k for k, v in data.get("question_type", {}).items()}  # id -> name, when the file has them
        images = self.images or "."
        items = []
        for n, q in enumerate(questions):
            source = f"{self.file}, questions[{n}]"
            if not isinstance(q, dict):
                raise BenchmarkError(f"seed: {source} is not an object")
            required(q, FIELDS, self.name, source)
            if int(q["question_type_id"]) not in IMAGE_TYPES:
                continue  # video questions (types 10-12)
            choices = {k: str(q[f"choice_{k.lower()}"]) for k in LETTERS}
            if q["answer"] not in choices:
                raise BenchmarkError(f"seed: {source}: answer {q['answer']!r} is not one of {list(LETTERS)}")
            type_id = int(q["question_type_id"])
            items.append(Item(
                qid=str(q["question_id"]), question=multiple_choice(q["question"], choices),
                category=names.get(type_id, f"type_{type_id}"), gold=q["answer"],
                image_path=self._image_file(images, str(q["data_id"]), source), choices=choices,
                plain_question=q["question"], source=source, row=q))
            if self.limit is not None and len(items) >= self.limit:
                break
        return self._take(items)

    def score(self, item: Item, prediction: str) -> Scored:
        """prediction: the generated answer, or (likelihood) the letter of the best choice."""
        letter = prediction if self.protocol == "likelihood" else parse_option(prediction, item.choices)
        return Scored(float(letter == item.gold), letter)
