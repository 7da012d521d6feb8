"""The graded probe's families: every answer recomputed independently from the drawn image
(pixels, connected components, centroids, areas), balanced answers, stated chance levels,
determinism, one held-out split per family."""

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from eelight.data.families import CHANCE, DIGITS, FAMILIES, NUMBERS9, scene
from eelight.data.probe import COLOURS, POSITIONS

N = 300  # scenes per family checked


def _mask(image, rgb) -> np.ndarray:
    return (np.asarray(image).astype(int) == np.array(rgb)).all(-1)


def _components(mask: np.ndarray) -> int:
    return len(_blobs(mask))


def _drawn_colours(image) -> dict[str, np.ndarray]:
    return {name: m for name, rgb in COLOURS.items() if (m := _mask(image, rgb)).any()}


def _answers(family):
    return {q.kind: q.answer for q in scene(family, 0, 0).questions}


def test_scenes_are_deterministic_per_seed():
    for family in FAMILIES:
        a, b, c = scene(family, 4, 1), scene(family, 4, 1), scene(family, 4, 2)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert [q.answer for q in a.questions] == [q.answer for q in b.questions]
        assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_attribute_answers_match_the_pixels():
    for i in range(N):
        s = scene("attribute", i, 0)
        a = {q.kind: q.answer for q in s.questions}
        drawn = _drawn_colours(s.image)
        assert list(drawn) == [a["colour"]]
        mask = drawn[a["colour"]]
        assert NUMBERS9[_components(mask) - 1] == a["count"]
        ys, xs = np.nonzero(mask)
        quadrant = (int(xs.mean() >= 32), int(ys.mean() >= 32))
        assert POSITIONS[a["position"]] == quadrant


def _blobs(mask: np.ndarray) -> list[tuple[int, float, float]]:
    """(area, centre x, centre y) of each 4-connected component of a boolean mask (a plain flood
    fill: independent of the generator)."""
    labels = np.zeros(mask.shape, int)
    for y, x in zip(*np.nonzero(mask), strict=True):
        if labels[y, x]:
            continue
        labels[y, x] = labels.max() + 1
        stack = [(y, x)]
        while stack:
            cy, cx = stack.pop()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = labels[y, x]
                    stack.append((ny, nx))
    blobs = []
    for k in range(1, labels.max() + 1):
        ys, xs = np.nonzero(labels == k)
        blobs.append((len(ys), float(xs.mean()), float(ys.mean())))
    return blobs


def _objects(image) -> list[tuple[int, float, float]]:
    return _blobs(~_mask(image, (245, 245, 245)))


SMALL_AREA = 100  # pixels: a small shape has at most 64 (an 8x8 square), a large one at least ~160


def test_small_answer_is_the_number_of_small_blobs():
    for i in range(N):
        s = scene("small", i, 0)
        areas = [a for a, _, _ in _objects(s.image)]
        assert all(a <= 64 or a >= 150 for a in areas), areas  # the two sizes cannot be confused
        assert NUMBERS9[sum(a < SMALL_AREA for a in areas) - 1] == s.questions[0].answer
        assert 1 <= sum(a >= SMALL_AREA for a in areas) <= 3


def test_count_answer_is_the_number_of_connected_shapes():
    for i in range(N):
        s = scene("count", i, 0)
        (mask,) = _drawn_colours(s.image).values()
        assert NUMBERS9[_components(mask) - 1] == s.questions[0].answer


def test_relation_answer_is_whether_the_large_colour_surrounds_the_small_blob():
    for i in range(N):
        s = scene("relation", i, 0)
        q = s.questions[0]
        drawn = _drawn_colours(s.image)
        assert len(drawn) == 2
        small, large = sorted(drawn.values(), key=lambda m: m.sum())  # by visible area
        assert small.sum() <= 81 and large.sum() >= 500 and _components(small) == 1  # a 9x9 box at most
        ys, xs = np.nonzero(small)
        y0, y1, x0, x1 = ys.min() - 1, ys.max() + 1, xs.min() - 1, xs.max() + 1  # the ring around its box
        ring = np.concatenate([large[y0, x0:x1 + 1], large[y1, x0:x1 + 1], large[y0:y1 + 1, x0], large[y0:y1 + 1, x1]])
        background = _mask(s.image, (245, 245, 245))
        ring_bg = np.concatenate([background[y0, x0:x1 + 1], background[y1, x0:x1 + 1], background[y0:y1 + 1, x0],
                                  background[y0:y1 + 1, x1]])
        inside = bool(ring.all())
        assert inside or ring_bg.all()  # apart: only background around it, never touching
        assert q.answer == ("yes" if inside else "no"), (i, s.caption)
        assert _components(large) == 1  # the small one never cuts the large one in two


def test_relation_question_and_large_shape_do_not_give_the_answer():
    yes, total = Counter(), Counter()
    for i in range(2000):
        s = scene("relation", i, 0)
        key = (s.questions[0].text, s.facts["objects"][0]["shape"])
        total[key] += 1
        yes[key] += s.questions[0].answer == "yes"
    assert len(total) == 2  # one wording; the large shape is a circle or a square
    for key, n in total.items():
        assert abs(yes[key] - n / 2) < 5 * (n / 4) ** 0.5, (key, yes[key], n)


def test_compare_answer_is_the_shape_with_more_pixels():
    for i in range(N):
        s = scene("compare", i, 0)
        ink = ~_mask(s.image, (245, 245, 245))
        left, right = int(ink[:, :32].sum()), int(ink[:, 32:].sum())
        boxes = {o["shape"]: o["box"] for o in s.facts["objects"]}
        larger_side = "left" if left > right else "right"
        answer_side = "left" if boxes[s.questions[0].answer][0] < 32 else "right"
        assert larger_side == answer_side
        assert set(s.questions[0].space) == set(boxes)


def test_reading_and_document_answers_are_what_was_rendered():
    for i in range(50):
        r = scene("reading", i, 0)
        assert r.facts["text"] == r.questions[0].answer and r.questions[0].answer in DIGITS
        assert (~_mask(r.image, (245, 245, 245))).sum() > 30  # the number is drawn
        d = scene("document", i, 0)
        key = d.questions[0].text.removeprefix("what is the ").removesuffix(" ?")
        assert d.facts["table"] == {key: d.questions[0].answer} and d.caption == f"{key} {d.questions[0].answer}"


def _field_with(digit: str, facts: dict, size: int = 64) -> np.ndarray:
    """The inside of the form's field with only `digit` drawn at the scene's place and type size."""
    canvas = Image.new("RGB", (size, size), (245, 245, 245))
    font = ImageFont.load_default(size=facts["value_font"])
    ImageDraw.Draw(canvas).text(facts["value_at"], digit, font=font, fill=(20, 20, 20))
    x0, y0, x1, y1 = facts["field"]
    return np.asarray(canvas)[y0 + 1:y1, x0 + 1:x1]


def test_the_document_field_holds_the_answer_digit_and_no_other():
    for i in range(100):
        d = scene("document", i, 0)
        x0, y0, x1, y1 = d.facts["field"]
        inside = np.asarray(d.image)[y0 + 1:y1, x0 + 1:x1]
        matches = [v for v in DIGITS if np.array_equal(inside, _field_with(v, d.facts))]
        assert matches == [d.questions[0].answer]
        assert (~_mask(d.image.crop((0, 0, 64, y0)), (245, 245, 245))).sum() > 20  # the key's label is drawn
        assert _mask(d.image.crop((x0, y0, x1 + 1, y1 + 1)), (150, 150, 150)).sum() >= 2 * (x1 - x0 + y1 - y0)  # border


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "attribute"])
def test_answers_are_balanced_and_chance_is_one_over_the_answer_space(family):
    n = 1800
    counts = Counter(scene(family, i, 0).questions[0].answer for i in range(n))
    space = scene(family, 0, 0).questions[0].space
    if family != "compare":  # compare's space is the two shapes shown; its answers are the 4 shapes
        assert set(counts) <= set(space) and CHANCE[family] == pytest.approx(1 / len(space))
    else:
        assert CHANCE[family] == 0.5
    expected = n / len(counts)
    assert len(counts) == {"small": 4, "count": 9, "relation": 2, "compare": 4, "reading": 10, "document": 10}[family]
    for answer, c in counts.items():  # within 5 standard deviations of uniform
        assert abs(c - expected) < 5 * expected ** 0.5, (answer, c, expected)


def test_attribute_answers_balanced_and_chance():
    counts = Counter((q.kind, q.answer) for i in range(1200) for q in scene("attribute", i, 0).questions)
    for kind in ("shape", "colour", "position", "count"):
        per = [c for (k, _), c in counts.items() if k == kind]
        assert len(per) == 4 and max(per) - min(per) < 5 * 300 ** 0.5
    assert CHANCE["attribute"] == 0.25


def test_build_probe_writes_one_held_out_split_per_family(tmp_path):
    from eelight.data.probe import build_probe, eval_shards
    from eelight.eval.probe import probe_scenes

    splits = build_probe(str(tmp_path), n_train=14, n_eval=3, seed=1, shard_size=10)
    assert splits["train"]["samples"] == 14 and {f"eval-{f}" for f in FAMILIES} <= set(splits)
    index = json.loads((tmp_path / "index.json").read_text())
    assert all(index["splits"][f"eval-{f}"]["samples"] == 3 for f in FAMILIES)
    scenes = list(probe_scenes(eval_shards(str(tmp_path)), limit=2))
    assert Counter(family for _, _, family, _, _ in scenes) == {f: 2 for f in FAMILIES}
    train_keys = {k for k, *_ in probe_scenes(f"{tmp_path}/train-{{000000..000001}}.tar")}
    assert not train_keys & {k for k, *_ in scenes}
