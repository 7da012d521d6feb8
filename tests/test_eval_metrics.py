"""Benchmark metrics against values computed by hand (EvalAI normalisation, VQA accuracy,
ANLS at and around τ, option extraction, CircularEval)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eelight.eval.base import Item, Scored
from eelight.eval.metrics import CategoryScore, anls, normalize_vqa, parse_option, vqa_accuracy
from eelight.eval.mmbench import MMBench, rotations


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"),  # number words -> digits, lower case
    ("the cat", "cat"),  # articles dropped
    ("An apple", "apple"),
    ("dont", "don't"),  # contractions restored
    ("5,000", "5000"),  # commas deleted
    ("yes.", "yes"),  # a period not before a digit is removed
    ("3.5", "3.5"),  # ... one before a digit stays
    ("coca-cola", "coca cola"),  # punctuation not touching a space becomes a space
    ("left - right", "left right"),  # ... and touching one is deleted
    ("what?", "what"),
    ("Mr. Smith's", "mr smith 's"),  # 's split off
    ("  ten\n", "10"),
])
def test_evalai_normalisation(raw, expected):
    assert normalize_vqa(raw) == expected


def test_vqa_accuracy_is_the_leave_one_out_mean():
    answers = ["2", "2", "two"] + ["3"] * 7
    # "two" -> "2": 3 golds match. Leaving out one of them: 2 matches (2/3); leaving out a "3": 3 (1).
    assert vqa_accuracy("Two", answers) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("3", answers) == 1.0
    assert vqa_accuracy("4", answers) == 0.0
    # one matching gold: 0 when it is left out, 1/3 in the other 9 subsets
    assert vqa_accuracy("the cat", ["cat"] + ["dog"] * 9) == pytest.approx(9 * (1 / 3) / 10)


def test_anls_threshold_and_normalisation():
    assert anls("hello", ["hello"]) == 1.0
    assert anls("helo", ["hello"]) == pytest.approx(0.8)  # 1 edit / 5
    assert anls("hxxlo", ["hello"]) == pytest.approx(0.6)
    assert anls("hxxxo", ["hello"]) == 0.0  # 0.4 < τ = 0.5
    assert anls("abxy", ["abcd"]) == pytest.approx(0.5)  # exactly τ: kept
    assert anls(" Hello  World ", ["hello world"]) == 1.0  # case and whitespace
    assert anls("hello", ["abc", "hello"]) == 1.0  # best gold
    # distance on collapsed strings (2), length of the raw ones: max(len("a  b"), len("a b c")) = 5
    assert anls("a b c", ["a  b"]) == pytest.approx(1 - 2 / 5)
    assert anls("straße", ["strase"]) == pytest.approx(1 - 1 / 7)  # lengths after upper(): STRASSE


def _lmms_eval_anls(references: list[str], prediction: str, threshold: float = 0.5) -> float:
    """lmms-eval's published `anls` metric (lmms_eval/api/metrics.py), with its own dynamic-
    programming Levenshtein distance over code points."""
    def distance(a: str, b: str) -> int:
        row = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            prev, row[0] = row[0], i
            for j, cb in enumerate(b, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
        return row[-1]

    values = []
    for answer in references:
        gt, det = " ".join(answer.strip().lower().split()), " ".join(prediction.strip().lower().split())
        length = max(len(answer.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else distance(gt, det) / length)
    result = 1 - min(values)
    return 0.0 if result < threshold else result


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12), st.lists(st.text(max_size=12), min_size=1, max_size=3))
def test_anls_equals_lmms_eval_per_sample_for_any_unicode(prediction, answers):
    assert anls(prediction, answers) == pytest.approx(_lmms_eval_anls(answers, prediction), abs=1e-12)


@pytest.mark.parametrize("prediction, expected", [
    ("B", "B"),
    ("The answer is B.", "B"),
    ("(C)", "C"),
    ("A", "A"),
    ("red", "A"),  # no letter: the unique option text
    ("It is green", "B"),
    ("A cat sits on a mat", None),  # a lone "A" in a long answer is the article; no option text
    ("A red one is shown here", "A"),  # ... but the option text is unique
    ("red or green", None),  # two option texts
    ("B and C", None),  # two letters, no text
    ("purple", None),
])
def test_option_extraction(prediction, expected):
    assert parse_option(prediction, {"A": "red", "B": "green", "C": "blue", "D": "yellow"}) == expected


def test_category_score_means():
    metric = CategoryScore(["x", "y"])
    metric.update([1.0, 0.0, 1.0], ["x", "x", "y"], unparsed=1)
    out = metric.compute()
    assert out == {"overall": pytest.approx(2 / 3), "x": 0.5, "y": 1.0}
    assert float(metric.unparsed) == 1


def test_probe_reports_each_kind_of_a_family_with_several():
    """attribute asks 4 kinds: each gets its own accuracy; a one-kind family gets none."""
    from eelight.eval.probe import Probe

    rows = [("attribute", "colour", 1.0), ("attribute", "colour", 0.0), ("attribute", "colour", 0.0),
            ("attribute", "count", 1.0), ("relation", "relation", 1.0), ("relation", "relation", 0.0)]
    items = [Item(qid=str(i), question="q", category=f, gold="a", row={"kind": k}) for i, (f, k, _) in enumerate(rows)]
    out = Probe("unused").results(items, [Scored(s, "a") for *_, s in rows])
    assert out["probe/accuracy"] == pytest.approx(3 / 6)
    assert out["probe/accuracy/attribute"] == pytest.approx(2 / 4)
    assert out["probe/accuracy/attribute/colour"] == pytest.approx(1 / 3)
    assert out["probe/accuracy/attribute/count"] == 1.0
    assert out["probe/accuracy/relation"] == 0.5 and "probe/accuracy/relation/relation" not in out


def _mc(qid, gold, category="cat"):
    choices = {"A": "red", "B": "green", "C": "blue", "D": "yellow"}
    return Item(qid=qid, question="q", category=category, gold=gold, choices=choices, plain_question="q",
                group=qid, row={"index": qid, "A": "red", "B": "green", "C": "blue", "D": "yellow", "answer": gold})


def test_rotations_move_the_answer_with_its_text():
    rots = rotations(_mc("7", "C"))
    assert [r.qid for r in rots] == ["7", "1000007", "2000007", "3000007"]
    for r in rots:
        assert r.choices[r.gold] == "blue"
        assert r.group == "7"
    assert rots[1].choices == {"A": "green", "B": "blue", "C": "yellow", "D": "red"}
    assert rots[1].gold == "B"


def test_circular_eval_counts_a_question_only_if_every_rotation_is_right():
    bench = MMBench("unused.tsv")
    q1, q2 = rotations(_mc("1", "A", "p")), rotations(_mc("2", "B", "q"))
    items = q1 + q2
    scored = [Scored(1.0, "x")] * 4 + [Scored(1.0, "x")] * 3 + [Scored(0.0, None)]  # q2 fails one rotation
    out = bench.results(items, scored)
    assert out["mmbench/accuracy"] == 0.5
    assert out["mmbench/accuracy/p"] == 1.0 and out["mmbench/accuracy/q"] == 0.0
    assert out["mmbench/unparsed"] == 1.0
