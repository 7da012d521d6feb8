"""The graded probe's task families: scenes of increasing visual difficulty, each with its
questions, its answer space and its chance level (docs/DESIGN.md §6).

| family | scene | question | answers (chance) |
|---|---|---|---|
| attribute | 1-4 copies of one shape, one colour, one quadrant | shape / colour / position / count | 4 each (1/4) |
| small | 1-4 small shapes (one patch) among 1-3 large ones | how many small ones | 4 (1/4) |
| count | 1-9 small shapes on a 3x3 grid | how many | 9 (1/9) |
| relation | a large circle or square and a small shape, inside it or apart | is the small shape in the large one | yes, no (1/2) |
| compare | a large and a small shape | which is larger | the 2 shapes (1/2) |
| reading | a rendered digit | what digit is written | 10 (1/10) |
| document | a one-field form: a key label over a box holding a digit | what is the <key> | 10 (1/10) |

Each scene records what was drawn (`facts`: object boxes, colours, text), so tests recompute
every answer independently (from the pixels where they can). Everything is fixed by the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from eelight.data.scenes import COLOURS, NUMBERS, PLURAL, SHAPES, probe_item, shape
from eelight.data.scenes import draw as draw_attribute

BACKGROUND = (245, 245, 245)
NUMBERS9 = (*NUMBERS, "five", "six", "seven", "eight", "nine")
DIGITS = tuple(str(n) for n in range(10))
KEYS = ("age", "room", "code", "page", "size", "year")
RELATION_QUESTION = "is the small shape in the large one ?"
FAMILIES = ("attribute", "small", "count", "relation", "compare", "reading", "document")
CHANCE = {"attribute": 1 / 4, "small": 1 / 4, "count": 1 / 9, "relation": 1 / 2, "compare": 1 / 2,
          "reading": 1 / 10, "document": 1 / 10}


@dataclass
class Question:
    kind: str
    text: str  # the plain question
    answer: str
    space: tuple[str, ...]  # every answer this question can have (multiple choice draws from it)


@dataclass
class Scene:
    family: str
    image: Image.Image
    caption: str
    questions: list[Question]
    facts: dict[str, Any] = field(default_factory=dict)


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (size, size), BACKGROUND)
    return image, ImageDraw.Draw(image)


def _noun(kind: str, n: int) -> str:
    return kind if n == 1 else PLURAL[kind]


def attribute(rng: random.Random, size: int) -> Scene:
    item = probe_item(rng.randrange(1 << 30), rng.randrange(1 << 30))
    from eelight.data.scenes import ANSWERS, QUESTIONS

    questions = [Question(k, QUESTIONS[k], item.answer(k), tuple(ANSWERS[k])) for k in sorted(QUESTIONS)]
    facts = {"shape": item.shape, "colour": item.colour, "position": item.position, "count": item.count}
    return Scene("attribute", draw_attribute(item, size), item.caption(), questions, facts)


def small(rng: random.Random, size: int) -> Scene:
    """1-4 small shapes (about one patch) among 1-3 large ones, in distinct cells of a 3x3 grid."""
    image, pen = _canvas(size)
    n_small, n_large = rng.randint(1, 4), rng.randint(1, 3)
    cell = size // 3
    objects = []
    for i, c in enumerate(rng.sample(range(9), n_small + n_large)):
        r = max(size // 8, 3) - 1 if i < n_small else int(cell * 0.85)
        x0, y0 = (c % 3) * cell + rng.randint(1, cell - r - 1), (c // 3) * cell + rng.randint(1, cell - r - 1)
        kind, colour = rng.choice(SHAPES), rng.choice(sorted(COLOURS))
        shape(pen, kind, (x0, y0, x0 + r, y0 + r), COLOURS[colour])
        objects.append({"shape": kind, "colour": colour, "small": i < n_small, "box": (x0, y0, x0 + r, y0 + r)})
    q = Question("small", "how many small shapes are there ?", NUMBERS9[n_small - 1], NUMBERS9[:4])
    return Scene("small", image, f"{NUMBERS9[n_small - 1]} small and {NUMBERS9[n_large - 1]} large shapes", [q],
                 {"objects": objects})


def count(rng: random.Random, size: int) -> Scene:
    image, pen = _canvas(size)
    n = rng.randint(1, 9)
    kind, colour = rng.choice(SHAPES), rng.choice(sorted(COLOURS))
    cell = size // 3
    r = int(cell * 0.6)
    boxes = []
    for c in rng.sample(range(9), n):
        x0 = (c % 3) * cell + rng.randint(1, cell - r - 1)
        y0 = (c // 3) * cell + rng.randint(1, cell - r - 1)
        shape(pen, kind, (x0, y0, x0 + r, y0 + r), COLOURS[colour])
        boxes.append((x0, y0, x0 + r, y0 + r))
    q = Question("count", "how many shapes are there ?", NUMBERS9[n - 1], NUMBERS9)
    return Scene("count", image, f"{NUMBERS9[n - 1]} {colour} {_noun(kind, n)}", [q],
                 {"boxes": boxes, "shape": kind, "colour": colour})


def relation(rng: random.Random, size: int) -> Scene:
    """A large circle or square and a small shape of another colour, drawn either inside the
    large one or apart from it (yes and no equally likely, drawn first)."""
    image, pen = _canvas(size)
    inside = rng.random() < 0.5
    big_kind, little_kind = rng.choice(("circle", "square")), rng.choice(SHAPES)
    big_colour, little_colour = rng.sample(sorted(COLOURS), 2)
    big, little = rng.randint(int(size * 0.47), int(size * 0.59)), max(size // 8, 3)
    x0, y0 = rng.randint(1, size - big - 2), rng.randint(1, size - big - 2)
    big_box = (x0, y0, x0 + big, y0 + big)
    if inside:  # within the square inscribed in the circle (or the square itself), 2 px from its edge
        half = big / 2 if big_kind == "square" else big / 2 ** 1.5
        cx, cy = x0 + big / 2, y0 + big / 2
        lo_x, hi_x = int(cx - half) + 2, int(cx + half) - little - 2
        lo_y, hi_y = int(cy - half) + 2, int(cy + half) - little - 2
        lx, ly = rng.randint(lo_x, hi_x), rng.randint(lo_y, hi_y)
    else:  # on a side of the large shape with room, at least 2 px clear of its box
        far = size - little - 2
        sides = [((1, x0 - 3 - little), (1, far)), ((x0 + big + 3, far), (1, far)),  # (x, y) ranges: left, right,
                 ((1, far), (1, y0 - 3 - little)), ((1, far), (y0 + big + 3, far))]  # above, below
        (ax, bx), (ay, by) = rng.choice([(x, y) for x, y in sides if x[0] <= x[1] and y[0] <= y[1]])
        lx, ly = rng.randint(ax, bx), rng.randint(ay, by)
    little_box = (lx, ly, lx + little, ly + little)
    shape(pen, big_kind, big_box, COLOURS[big_colour])
    shape(pen, little_kind, little_box, COLOURS[little_colour])
    objects = [{"shape": big_kind, "colour": big_colour, "size": "large", "box": big_box},
               {"shape": little_kind, "colour": little_colour, "size": "small", "box": little_box}]
    q = Question("relation", RELATION_QUESTION, "yes" if inside else "no", ("yes", "no"))
    caption = f"a small {little_colour} {little_kind} {'in' if inside else 'and'} a large {big_colour} {big_kind}"
    return Scene("relation", image, caption, [q], {"objects": objects, "inside": inside})


def compare(rng: random.Random, size: int) -> Scene:
    image, pen = _canvas(size)
    kinds = rng.sample(SHAPES, 2)  # kinds[0] is the larger
    big, little = rng.randint(int(size * 0.38), int(size * 0.45)), rng.randint(int(size * 0.14), int(size * 0.22))
    left_big = rng.random() < 0.5
    half = size // 2
    objects = []
    for kind, r, left in ((kinds[0], big, left_big), (kinds[1], little, not left_big)):
        x0 = (0 if left else half) + rng.randint(1, half - r - 1)
        y0 = rng.randint(1, size - r - 1)
        colour = rng.choice(sorted(COLOURS))
        shape(pen, kind, (x0, y0, x0 + r, y0 + r), COLOURS[colour])
        objects.append({"shape": kind, "colour": colour, "box": (x0, y0, x0 + r, y0 + r)})
    asked = rng.sample(kinds, 2)  # the order named in the question is random
    q = Question("compare", f"which is larger , the {asked[0]} or the {asked[1]} ?", kinds[0], tuple(asked))
    return Scene("compare", image, f"a large {kinds[0]} and a small {kinds[1]}", [q], {"objects": objects})


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def reading(rng: random.Random, size: int) -> Scene:
    image, pen = _canvas(size)
    digit = rng.choice(DIGITS)
    font = _font(int(size * 0.5))
    left, top, right, bottom = pen.textbbox((0, 0), digit, font=font)
    x = rng.randint(1, max(size - (right - left) - 1, 1)) - left
    y = rng.randint(1, max(size - (bottom - top) - 1, 1)) - top
    colour = rng.choice([(20, 20, 20), COLOURS["blue"], COLOURS["red"]])
    pen.text((x, y), digit, font=font, fill=colour)
    q = Question("reading", "what digit is written ?", digit, DIGITS)
    return Scene("reading", image, f"the digit {digit}", [q], {"text": digit})


def document(rng: random.Random, size: int) -> Scene:
    """A one-field form: a key label ("age:") in small type over a bordered field holding the
    value, one digit in large type at a random place in it; asked the key's value.

    Version 8's table (two "key: value" rows in 16 px type, asked one row by its key) stayed at
    chance for every variant in runs 5-9: it needs the text to pick one of two digits, a
    selection 280 steps never taught (docs/results/archive/history.md). The form keeps the DocVQA task (find a
    named field, read its value) with one field, so it is learnable at the study's budget."""
    image, pen = _canvas(size)
    key, value = rng.choice(KEYS), rng.choice(DIGITS)
    label_font, value_font = _font(max(size * 12 // 64, 6)), _font(max(int(size * 0.45), 8))
    label_y = rng.randint(1, 3)
    pen.text((rng.randint(2, 5), label_y), f"{key}:", font=label_font, fill=(20, 20, 20))
    field = (1, label_y + size * 14 // 64, size - 2, size - 2)  # the value's bordered box
    pen.rectangle(field, outline=(150, 150, 150))
    left, top, right, bottom = pen.textbbox((0, 0), value, font=value_font)
    x = rng.randint(field[0] + 2, max(field[2] - 2 - (right - left), field[0] + 2)) - left
    y = rng.randint(field[1] + 2, max(field[3] - 2 - (bottom - top), field[1] + 2)) - top
    pen.text((x, y), value, font=value_font, fill=(20, 20, 20))
    q = Question("document", f"what is the {key} ?", value, DIGITS)
    return Scene("document", image, f"{key} {value}", [q],
                 {"table": {key: value}, "field": field, "value_at": (x, y), "value_font": value_font.size})


GENERATORS = {"attribute": attribute, "small": small, "count": count, "relation": relation, "compare": compare,
              "reading": reading, "document": document}


def scene(family: str, index: int, seed: int, size: int = 64) -> Scene:
    """The index-th scene of a family for a seed (independent of every other scene)."""
    rng = random.Random(f"{family}:{seed}:{index}")
    return GENERATORS[family](rng, size)


def family_words() -> list[str]:
    """Every word the families' captions, questions and answers use (for the word tokenizer)."""
    words = set(NUMBERS9) | set(DIGITS) | set(KEYS) | set(SHAPES) | set(PLURAL.values()) | set(COLOURS)
    text = ("what shape is the small one ? how many shapes are there ? is left of right above below yes no "
            "which larger , or digit written a and three large the")
    return sorted(words | set(text.split()))


def options(q: Question, rng: random.Random) -> dict[str, str]:
    """Multiple-choice options, letter -> text: the whole answer space in a random order when it
    has at most 4 answers, else the answer and 3 others."""
    from eelight.data.prompts import LETTERS

    if len(q.space) <= len(LETTERS):
        shown = rng.sample(q.space, len(q.space))
    else:
        shown = rng.sample([q.answer, *rng.sample([a for a in q.space if a != q.answer], 3)], 4)
    return dict(zip(LETTERS, shown, strict=False))


def ask(q: Question, form: str, rng: random.Random) -> str:
    """The question in one of the forms of `eelight.data.prompts` (plain, short, choice)."""
    from eelight.data.prompts import multiple_choice, short_answer

    if form == "plain":
        return q.text
    if form == "short":
        return short_answer(q.text)
    return multiple_choice(q.text, options(q, rng))


def conversation(s: Scene, rng: random.Random, n_turns: int = 2) -> list[dict[str, str]]:
    """LLaVA-style turns: up to n_turns of the scene's questions, each in a random form, answered
    with the answer's text (also for multiple choice: see `eelight.data.probe`); the image
    marker opens the first question."""
    from eelight.data.scenes import FORMS

    turns = []
    for i, q in enumerate(rng.sample(s.questions, min(n_turns, len(s.questions)))):
        text = ask(q, rng.choice(FORMS), rng)
        turns += [{"from": "human", "value": text if i else "<image>\n" + text}, {"from": "gpt", "value": q.answer}]
    return turns


QUESTIONS_PER_SCENE = {f: 4 if f == "attribute" else 1 for f in FAMILIES}


def chance_for(benchmark: str) -> tuple[dict[str, float], float | None]:
    """(chance per family, overall chance) of a uniform random guesser on the probe's held-out
    scenes scored through `benchmark`: exact match over the answer space (probe); one option
    of those shown per pass (MMBench with CircularEval: (1/k)^k for k options; SEED: 1/4);
    one of the 10 digits (TextVQA / DocVQA). Overall: weighted by questions per scene."""
    shown = {"attribute": 4, "small": 4, "count": 4, "relation": 2, "compare": 2}
    if benchmark == "probe":
        per = dict(CHANCE)
    elif benchmark == "mmbench":
        per = {f: (1 / k) ** k for f, k in shown.items()}
    elif benchmark == "seed":
        per = {f: 1 / 4 for f in ("attribute", "small", "count")}
    elif benchmark == "textvqa":
        per = {"reading": CHANCE["reading"]}
    elif benchmark == "docvqa":
        per = {"document": CHANCE["document"]}
    else:
        return {}, None
    weights = {f: QUESTIONS_PER_SCENE[f] for f in per}
    overall = sum(per[f] * weights[f] for f in per) / sum(weights.values())
    return per, overall
