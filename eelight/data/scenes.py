"""The attribute scene, the probe's first family and the primitives every family draws with:
shapes, colours, quadrants, counts, the questions asked of a scene and their answers
(`eelight.data.families` builds the other families on these; `eelight.data.probe` writes
the shards). Fully determined by the seed."""

from __future__ import annotations

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
VERSION = 9  # bump when what the generator writes changes: cached probes and backbones are rebuilt


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

def probe_item(index: int, seed: int) -> ProbeItem:
    rng = random.Random(seed * 1_000_003 + index)
    return ProbeItem(
        shape=rng.choice(SHAPES), colour=rng.choice(sorted(COLOURS)), position=rng.choice(sorted(POSITIONS)),
        count=rng.randint(1, 4), seed=rng.randrange(1 << 30),
    )


def shape(pen: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    """One filled shape inside the square box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    r = x1 - x0
    if kind == "circle":
        pen.ellipse(box, fill=colour)
    elif kind == "square":
        pen.rectangle(box, fill=colour)
    elif kind == "triangle":
        pen.polygon([(x0 + r // 2, y0), (x0, y1), (x1, y1)], fill=colour)
    else:  # cross
        w = max(r // 4, 1)
        pen.rectangle((x0 + r // 2 - w, y0, x0 + r // 2 + w, y1), fill=colour)
        pen.rectangle((x0, y0 + r // 2 - w, x1, y0 + r // 2 + w), fill=colour)


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
        shape(pen, item.shape, (x0, y0, x0 + r, y0 + r), COLOURS[item.colour])
    return image
