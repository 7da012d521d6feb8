"""Probe accuracy: greedy answers to the four question types on held-out images,
scored by exact match of the answer tokens (a torchmetrics metric), with chance."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics import Metric

from eelight.data.probe import CHANCE, QUESTIONS
from eelight.data.text import prompt, template

KINDS = sorted(QUESTIONS)


class NotProbeData(ValueError):
    """The eval shards hold no probe answers (validation then reports the loss only)."""


class ProbeAccuracy(Metric):
    """Exact-match accuracy per question type (and overall)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.zeros(len(KINDS)), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(len(KINDS)), dist_reduce_fx="sum")

    def update(self, predictions: list[list[int]], targets: list[list[int]], kinds: list[str]) -> None:
        for pred, target, kind in zip(predictions, targets, kinds, strict=True):
            i = KINDS.index(kind)
            self.correct[i] += float(pred == target)
            self.total[i] += 1

    def compute(self) -> dict[str, torch.Tensor]:
        per_kind = {k: self.correct[i] / self.total[i].clamp(min=1) for i, k in enumerate(KINDS)}
        return {"overall": self.correct.sum() / self.total.sum().clamp(min=1), **per_kind}


@dataclass
class ProbeQuestion:
    pixel_values: torch.Tensor  # (C, S, S)
    prompt: list[int]
    answer: list[int]  # answer tokens + end of turn, as the model must generate them
    kind: str
    image_offset: int = 0  # prompt tokens before the image, as in training (`text.prompt`)


def probe_questions(urls: str, tokenizer, processor, template_name: str, n_images: int,
                    placement: str = "marker") -> list[ProbeQuestion]:
    """Four questions for each of the first n_images held-out probe images, each asked as
    the first question of a conversation (the image marker opens it, as in training)."""
    import webdataset as wds

    from eelight.data.image import FastImageTransform
    from eelight.data.loader import expand_urls

    tpl = template(template_name)
    transform = FastImageTransform(processor)
    out: list[ProbeQuestion] = []
    ds = wds.DataPipeline(wds.SimpleShardList(expand_urls(urls)), wds.tarfile_to_samples(), wds.decode("pil"))
    for sample in ds:
        if len(out) >= 4 * n_images:
            break
        answers = sample["json"].get("probe")
        if not answers:
            raise NotProbeData(f"sample {sample['__key__']} has no probe answers: not a probe eval shard")
        image = next(sample[e] for e in ("png", "jpg") if e in sample)
        pixels = transform(image)
        for kind in KINDS:
            ask = prompt(QUESTIONS[kind], tpl, tokenizer, placement)
            answer = tokenizer.encode(answers[kind], add_special_tokens=False)
            end = tokenizer.encode(tpl.end_of_turn, add_special_tokens=False) if tpl.end_of_turn else [
                tokenizer.eos_token_id]
            out.append(ProbeQuestion(pixels, ask.ids, answer + end, kind, ask.image_offset))
    return out


@torch.no_grad()
def evaluate_probe(model, questions: list[ProbeQuestion], pad_id: int, batch_size: int = 64) -> dict[str, float]:
    """Greedy answers, left-padded batches; returns accuracy overall and per type."""
    metric = ProbeAccuracy()
    device = next(model.parameters()).device
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        width = max(len(q.prompt) for q in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, q in enumerate(chunk):
            ids[i, width - len(q.prompt):] = torch.tensor(q.prompt)
            mask[i, width - len(q.prompt):] = 1
        pixels = torch.stack([q.pixel_values for q in chunk]).to(device)
        n_new = max(len(q.answer) for q in chunk)
        offsets = torch.tensor([q.image_offset for q in chunk], device=device)
        out = model.generate(ids.to(device), pixels, attention_mask=mask.to(device), max_new_tokens=n_new,
                             image_offset=offsets)
        preds = [out[i, : len(q.answer)].tolist() for i, q in enumerate(chunk)]
        metric.update(preds, [q.answer for q in chunk], [q.kind for q in chunk])
    return {k: float(v) for k, v in metric.compute().items()}


def chance_levels() -> dict[str, float]:
    return {"overall": sum(CHANCE.values()) / len(CHANCE), **CHANCE}
