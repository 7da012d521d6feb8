"""The synthetic probe: images of coloured shapes with captions and questions.

An image holds `count` copies (1-4) of one shape in one colour, placed in one
quadrant. Captions ("two red circles at the top left") feed the align stage;
conversations of questions about shape, colour, position and count feed the
instruct stage, with one answer word (or two for the position) each. Every
question type has 4 answers, so chance is 25%. The vocabulary is a few dozen
words, so a tiny model on a CPU can learn it. Fully determined by the seed.

Each question is asked in one of three forms (`FORMS`), the formats `eelight eval`
asks the benchmarks in (`eelight.eval.prompts`, as LLaVA-1.5's training mixture does):
plain, short answer (TextVQA/DocVQA) and multiple choice with the options in a
random order (MMBench/SEED-Bench). So a probe model can be scored through every
benchmark's path (`data_pipelines/probe_benchmarks.py`).

A multiple-choice question is answered with the option's *text*, which the rule-based
extraction maps to its letter (VLMEvalKit's `can_infer_text` step). Trained to answer
the letter, the demo's 4-layer model stayed at chance on it (25.4% of rows right after
700 instruct steps, 0% under CircularEval, while 98.8% right in plain form): pointing from
an option's text back to its letter is a skill of its own that this scale does not learn,
and the probe measures what the model sees, not that skill.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (230, 200, 20)}
POSITIONS = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}
NUMBERS = ("one", "two", "three", "four")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}

QUESTIONS = {
    "shape": "what shape is in the image ?",
    "colour": "what colour are the shapes ?",
    "position": "where are the shapes ?",
    "count": "how many shapes are there ?",
}
CHANCE = {kind: 0.25 for kind in QUESTIONS}
ANSWERS = {"shape": list(SHAPES), "colour": sorted(COLOURS), "position": sorted(POSITIONS), "count": list(NUMBERS)}
FORMS = ("plain", "short", "choice")
VERSION = 4  # bump when what the generator writes changes: cached probes and backbones are rebuilt


@dataclass(frozen=True)
class ProbeItem:
    shape: str
    colour: str
    position: str
    count: int
    seed: int

    def answer(self, kind: str) -> str:
        return {"shape": self.shape, "colour": self.colour, "position": self.position,
                "count": NUMBERS[self.count - 1]}[kind]

    def caption(self) -> str:
        noun = self.shape if self.count == 1 else PLURAL[self.shape]
        return f"{NUMBERS[self.count - 1]} {self.colour} {noun} at the {self.position}"

    def ask(self, kind: str, form: str, rng: random.Random) -> tuple[str, str]:
        """(question, answer) for one question type in one of `FORMS`."""
        from eelight.eval.prompts import LETTERS, multiple_choice, short_answer

        if form == "plain":
            return QUESTIONS[kind], self.answer(kind)
        if form == "short":
            return short_answer(QUESTIONS[kind]), self.answer(kind)
        options = dict(zip(LETTERS, rng.sample(ANSWERS[kind], len(LETTERS)), strict=True))
        return multiple_choice(QUESTIONS[kind], options), self.answer(kind)

    def conversation(self, n_turns: int = 2) -> list[dict[str, str]]:
        """LLaVA-style turns, each in a random form; the image marker opens the first question."""
        rng = random.Random(self.seed + 1)
        turns = []
        for i, kind in enumerate(rng.sample(sorted(QUESTIONS), n_turns)):
            question, answer = self.ask(kind, rng.choice(FORMS), rng)
            turns += [{"from": "human", "value": question if i else "<image>\n" + question},
                      {"from": "gpt", "value": answer}]
        return turns


def probe_item(index: int, seed: int) -> ProbeItem:
    rng = random.Random(seed * 1_000_003 + index)
    return ProbeItem(
        shape=rng.choice(SHAPES), colour=rng.choice(sorted(COLOURS)), position=rng.choice(sorted(POSITIONS)),
        count=rng.randint(1, 4), seed=rng.randrange(1 << 30),
    )


def draw(item: ProbeItem, size: int = 64) -> Image.Image:
    """The item's image: `count` shapes in the 2x2 cells of its quadrant, with jitter."""
    rng = random.Random(item.seed)
    image = Image.new("RGB", (size, size), (245, 245, 245))
    pen = ImageDraw.Draw(image)
    qx, qy = POSITIONS[item.position]
    cell = size // 4
    for c in rng.sample(range(4), item.count):
        x0 = (qx * 2 + c % 2) * cell + rng.randint(0, max(cell // 8, 1))
        y0 = (qy * 2 + c // 2) * cell + rng.randint(0, max(cell // 8, 1))
        r = int(cell * 0.8)
        box = (x0, y0, x0 + r, y0 + r)
        colour = COLOURS[item.colour]
        if item.shape == "circle":
            pen.ellipse(box, fill=colour)
        elif item.shape == "square":
            pen.rectangle(box, fill=colour)
        elif item.shape == "triangle":
            pen.polygon([(x0 + r // 2, y0), (x0, y0 + r), (x0 + r, y0 + r)], fill=colour)
        else:
            w = max(r // 4, 1)
            pen.rectangle((x0 + r // 2 - w, y0, x0 + r // 2 + w, y0 + r), fill=colour)
            pen.rectangle((x0, y0 + r // 2 - w, x0 + r, y0 + r // 2 + w), fill=colour)
    return image


def corpus_words() -> list[str]:
    """Every word a caption, question or answer can use (for the word-level tokenizer)."""
    from eelight.eval.prompts import words as prompt_words

    words = set(SHAPES) | set(PLURAL.values()) | set(COLOURS) | set(NUMBERS) | {"at", "the"} | set(prompt_words())
    for text in list(QUESTIONS.values()) + list(POSITIONS):
        words |= set(text.split())
    return sorted(words)


def build_probe(out_dir: str, n_train: int, n_eval: int, seed: int = 0, image_size: int = 64,
                shard_size: int = 1000) -> dict:
    """Train and held-out eval shards (each sample has a caption and a conversation),
    the word-level tokenizer under `out_dir/tokenizer`, and the manifest."""
    from pathlib import Path

    from eelight.data.shards import Sample, write_shards
    from eelight.data.tokenizer import build_word_tokenizer

    def samples(split: str, n: int, split_seed: int):
        for i in range(n):
            item = probe_item(i, split_seed)
            yield Sample(key=f"{split}{i:07d}", image=draw(item, image_size), caption=item.caption(),
                         conversations=item.conversation(),
                         meta={"probe": {k: item.answer(k) for k in QUESTIONS}})

    out = Path(out_dir)
    train = write_shards(samples("train", n_train, seed), out, "train", max_count=shard_size)
    evals = write_shards(samples("eval", n_eval, seed + 7919), out, "eval", max_count=shard_size)
    build_word_tokenizer(corpus_words(), out / "tokenizer")
    (out / "probe.json").write_text(json.dumps({"version": VERSION, "seed": seed, "image_size": image_size}))
    return {"train": train, "eval": evals}


def probe_version(out_dir: str) -> int | None:
    """The generator version a probe folder was written with (None: none or older)."""
    from pathlib import Path

    stamp = Path(out_dir) / "probe.json"
    return json.loads(stamp.read_text()).get("version") if stamp.exists() else None
