"""Asking a model a benchmark's questions: batched greedy generation with the KV cache and
left padding, or likelihood ranking of the choices; then scoring and per-sample records.

Results do not depend on the batch size: each row is left-padded and masked, its RoPE
positions count its real tokens only, and a row's answer is cut at its own stop token
(tested: batch 1 == batch 8).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from eelight.data.image import FastImageTransform
from eelight.data.text import ChatTemplate, Encoded, prompt
from eelight.eval.base import Evaluator, Item, open_image


@dataclass
class Asker:
    """What is needed to put a question to a model the way it was trained."""

    model: Any  # eelight MLLM, eval mode
    tokenizer: Any
    transform: FastImageTransform
    template: ChatTemplate
    placement: str = "marker"
    batch_size: int = 16
    max_new_tokens: int = 16

    @property
    def stop_id(self) -> int:
        """The token that ends an answer: the template's end of turn, else EOS."""
        if self.template.end_of_turn:
            return self.tokenizer.encode(self.template.end_of_turn, add_special_tokens=False)[0]
        return self.tokenizer.eos_token_id

    def encode(self, question: str) -> Encoded:
        return prompt(question, self.template, self.tokenizer, self.placement)


@dataclass
class EvalResult:
    benchmark: str
    protocol: str
    metrics: dict[str, float]
    evaluator: Evaluator
    records: list[dict[str, Any]] = field(default_factory=list)  # one per question asked
    items: list[Item] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


def _pixels(asker: Asker, items: list[Item], benchmark: str) -> torch.Tensor:
    return torch.stack([asker.transform(open_image(item, benchmark)) for item in items])


@torch.no_grad()
def generate_answers(asker: Asker, items: list[Item], benchmark: str) -> list[str]:
    """Greedy answers to each item's question (decoded, up to the stop token, stripped)."""
    device = next(asker.model.parameters()).device
    pad = asker.tokenizer.pad_token_id if asker.tokenizer.pad_token_id is not None else asker.stop_id
    answers = []
    for start in range(0, len(items), asker.batch_size):
        chunk = items[start:start + asker.batch_size]
        asks = [asker.encode(item.question) for item in chunk]
        ids, mask = _left_pad([a.ids for a in asks], pad)
        offsets = torch.tensor([a.image_offset for a in asks], device=device)
        questions = torch.tensor([a.question_end for a in asks], device=device)
        out = asker.model.generate(ids.to(device), _pixels(asker, chunk, benchmark).to(device),
                                   attention_mask=mask.to(device), max_new_tokens=asker.max_new_tokens,
                                   eos_token_id=asker.stop_id, image_offset=offsets, question_end=questions)
        for row in out.tolist():
            row = row[: row.index(asker.stop_id)] if asker.stop_id in row else row
            answers.append(asker.tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers


@torch.no_grad()
def likelihood_answers(asker: Asker, items: list[Item], benchmark: str) -> tuple[list[str], list[dict]]:
    """For each item, the choice whose tokens have the highest mean log-likelihood as the
    answer to the plain question (ties: the first letter). Also returns the scores."""
    device = next(asker.model.parameters()).device
    pad = asker.tokenizer.pad_token_id if asker.tokenizer.pad_token_id is not None else asker.stop_id
    rows = []  # (item index, letter, prompt, answer tokens)
    for n, item in enumerate(items):
        ask = asker.encode(item.plain_question)
        for letter, text in item.choices.items():
            answer = asker.tokenizer.encode(str(text).strip(), add_special_tokens=False)
            rows.append((n, letter, ask, answer))
    cache: dict[int, torch.Tensor] = {}  # an item's pixels, kept while its choices are batched
    scores: list[dict[str, float]] = [{} for _ in items]
    for start in range(0, len(rows), asker.batch_size):
        chunk = rows[start:start + asker.batch_size]
        cache = {n: cache[n] if n in cache else _pixels(asker, [items[n]], benchmark)[0]
                 for n in dict.fromkeys(n for n, *_ in chunk)}
        ids, mask = _left_pad([ask.ids + answer for _, _, ask, answer in chunk], pad)
        batch_pixels = torch.stack([cache[n] for n, *_ in chunk])
        offsets = torch.tensor([ask.image_offset for _, _, ask, _ in chunk], device=device)
        questions = torch.tensor([ask.question_end for _, _, ask, _ in chunk], device=device)
        logits = asker.model(ids.to(device), batch_pixels.to(device), attention_mask=mask.to(device),
                             image_offset=offsets, question_end=questions).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        width = ids.shape[1]
        for i, (n, letter, _, answer) in enumerate(chunk):
            k = len(answer)
            if k == 0:
                scores[n][letter] = float("-inf")  # an empty choice has no tokens to score
                continue
            target = torch.tensor(answer, device=device)
            picked = logp[i, width - k - 1: width - 1].gather(-1, target[:, None])  # token t from logits t-1
            scores[n][letter] = float(picked.mean())
    best = [max(s, key=lambda letter: (s[letter], -list(s).index(letter))) for s in scores]
    return best, scores


def run_benchmark(asker: Asker, evaluator: Evaluator) -> EvalResult:
    """Load, ask, score and aggregate one benchmark."""
    start = time.perf_counter()
    items = evaluator.load()
    extra: list[dict] = [{} for _ in items]
    if evaluator.protocol == "likelihood":
        predictions, choice_scores = likelihood_answers(asker, items, evaluator.name)
        extra = [{"choice_loglik": s} for s in choice_scores]
    else:
        predictions = generate_answers(asker, items, evaluator.name)
    scored = [evaluator.score(item, p) for item, p in zip(items, predictions, strict=True)]
    records = [
        {"question_id": item.qid, "prompt": item.plain_question if evaluator.protocol == "likelihood"
         else item.question, "prediction": p, "parsed": s.parsed, "score": s.score, "category": item.category,
         **extra[n]}
        for n, (item, p, s) in enumerate(zip(items, predictions, scored, strict=True))
    ]
    return EvalResult(evaluator.name, evaluator.protocol, evaluator.results(items, scored), evaluator, records, items,
                      predictions, time.perf_counter() - start)
