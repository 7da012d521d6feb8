"""Benchmark metrics, sample by sample as the common harnesses compute them, and one
torchmetrics aggregate (sums that sync across DDP ranks).

- `vqa_accuracy`: TextVQA's VQA accuracy after the EvalAI answer normalisation that
  LLaVA's `m4c_evaluator` and lmms-eval use (not VLMEvalKit's variant, which keeps "5."):
  the mean over the 10 leave-one-out subsets of min(1, matches among the other 9 / 3).
- `anls`: DocVQA's ANLS (lmms-eval): per gold answer, 1 - Levenshtein / max(len) of the
  lower-cased, whitespace-collapsed strings (lengths of the raw strings), the best gold
  counts, and a score below τ = 0.5 is 0.
- `parse_option`: rule-based option extraction for multiple choice, as VLMEvalKit's
  `can_infer_option` then `can_infer_text`; never an LLM judge, never a random guess:
  an answer it cannot parse is None (scored 0, counted).
"""

from __future__ import annotations

import re

import torch
from torchmetrics import Metric

_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!"]
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"(?!<=\d)(\.)(?!\d)")  # EvalAI's pattern, its quirk included
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Contractions written without their apostrophe, restored (EvalAI's table, the lower-case
# entries: answers are lower-cased before this step).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "id've": "i'd've", "i'dve": "i'd've", "im": "i'm",
    "ive": "i've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}


def normalize_vqa(answer: str) -> str:
    """EvalAI's answer normalisation (as in LLaVA's m4c_evaluator / lmms-eval)."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in _PUNCTUATION:  # deleted where it touches a space (or digits,digits occur), else a space
        if f"{p} " in text or f" {p}" in text or _DIGIT_COMMA_DIGIT.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_NOT_BEFORE_DIGIT.sub("", out)
    words = [_NUMBERS.get(w, w) for w in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Mean over the leave-one-out subsets of the gold answers of min(1, matches / 3)."""
    pred = normalize_vqa(prediction)
    gold = [normalize_vqa(a) for a in answers]
    accs = []
    for left_out in range(len(gold)):
        matches = sum(1 for i, g in enumerate(gold) if i != left_out and g == pred)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / len(accs)


def anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    """Average normalised Levenshtein similarity of one prediction (best gold answer)."""
    import Levenshtein

    pred = " ".join(prediction.strip().lower().split())
    best = 0.0
    for answer in answers:
        gold = " ".join(answer.strip().lower().split())
        length = max(len(answer.upper()), len(prediction.upper()))  # lmms-eval's: "ß" counts as "SS"
        similarity = 1.0 if length == 0 else 1.0 - Levenshtein.distance(gold, pred) / length
        best = max(best, similarity)
    return best if best >= threshold else 0.0


def parse_option(prediction: str, options: dict[str, str]) -> str | None:
    """The option letter a free-text answer names, or None.

    1. punctuation to spaces; exactly one standalone option letter -> that letter (a lone
       "A" in a longer answer may be the article, so it does not count there);
    2. failing that, exactly one option whose text occurs in the answer (case-insensitive)."""
    spaced = prediction
    for c in ".()[],:;!*#{}":
        spaced = spaced.replace(c, " ")
    tokens = spaced.split()
    letters = [k for k in options if k in tokens]
    if len(letters) == 1 and not (letters[0] == "A" and len(tokens) > 3):
        return letters[0]
    low = prediction.lower()
    found = [k for k, text in options.items() if text and str(text).lower() in low]
    return found[0] if len(found) == 1 else None


class CategoryScore(Metric):
    """Mean score overall (over all scored units) and per category, and the count of
    predictions that could not be parsed. States are sums: they add up across DDP ranks."""

    full_state_update = False

    def __init__(self, categories: list[str]) -> None:
        super().__init__()
        self.categories = list(categories)
        self.add_state("total", default=torch.zeros(len(self.categories), dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(len(self.categories), dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("unparsed", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: list[float], categories: list[str], unparsed: int = 0) -> None:
        for score, category in zip(scores, categories, strict=True):
            i = self.categories.index(category)
            self.total[i] += score
            self.count[i] += 1
        self.unparsed += unparsed

    def compute(self) -> dict[str, float]:
        out = {"overall": float(self.total.sum() / self.count.sum().clamp(min=1))}
        for i, c in enumerate(self.categories):
            if self.count[i] > 0:
                out[c] = float(self.total[i] / self.count[i])
        return out
