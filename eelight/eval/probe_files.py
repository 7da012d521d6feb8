"""The held-out probe written out in the four benchmarks' official formats, so that the whole
evaluation path (files, prompts, answer extraction, metrics) runs end to end on a CPU:

    <out>/mmbench/MMBench_DEV_EN.tsv        one row per question, options in a seeded random
                                            order, base64 PNG; category = l2-category = type
    <out>/seed/SEED-Bench.json + images/    choice_a..d (seeded order), question types 1-4
    <out>/textvqa/TextVQA_0.5.1_val.json    10 answers per question, written as annotators
              + train_images/<id>.jpg       vary ("2" for "two", "the red"), which the
                                            EvalAI normalisation maps back
    <out>/docvqa/val_v1.0.json + documents/ answers [answer, "the " + answer]

Four questions (shape, colour, position, count) per image, the first `n_images` images of
the eval shards (the same ones the `probe` benchmark reads).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import random
from pathlib import Path

from PIL import Image

from eelight.data.probe import ANSWERS, NUMBERS, QUESTIONS
from eelight.eval.prompts import LETTERS

TYPES = {kind: i + 1 for i, kind in enumerate(sorted(QUESTIONS))}


def _probe_samples(shards: str, n_images: int):
    import webdataset as wds

    from eelight.data.loader import expand_urls

    for i, sample in enumerate(wds.DataPipeline(wds.SimpleShardList(expand_urls(shards)), wds.tarfile_to_samples())):
        if i >= n_images:
            return
        yield sample["__key__"], sample["png"], json.loads(sample["json"])["probe"]


def _annotators(answer: str) -> list[str]:
    """Ten answers as people write them: some use digits for numbers, some add an article."""
    digits = {w: str(i + 1) for i, w in enumerate(NUMBERS)}
    return [answer] * 6 + [digits.get(answer, answer)] * 2 + [f"the {answer}"] * 2


def write_probe_benchmarks(shards: str, out: str | Path, n_images: int = 200, seed: int = 0) -> dict[str, int]:
    """Write the four files (and their images); returns questions per benchmark."""
    out = Path(out)
    for sub in ("mmbench", "seed/images", "textvqa/train_images", "docvqa/documents"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    tsv_rows, seed_qs, text_qs, doc_qs = [], [], [], []
    for key, png, answers in _probe_samples(shards, n_images):
        (out / "seed/images" / f"{key}.png").write_bytes(png)
        (out / "docvqa/documents" / f"{key}.png").write_bytes(png)
        buf = io.BytesIO()
        Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="JPEG", quality=95)
        (out / "textvqa/train_images" / f"{key}.jpg").write_bytes(buf.getvalue())
        b64 = base64.b64encode(png).decode()
        for kind in sorted(QUESTIONS):
            qid = len(tsv_rows)
            options = dict(zip(LETTERS, rng.sample(ANSWERS[kind], len(LETTERS)), strict=True))
            letter = next(k for k, v in options.items() if v == answers[kind])
            tsv_rows.append({"index": qid, "question": QUESTIONS[kind], "hint": "", **options, "answer": letter,
                             "category": kind, "l2-category": kind, "split": "dev", "image": b64})
            seed_qs.append({"question_id": str(qid), "question_type_id": TYPES[kind], "data_id": f"{key}.png",
                            "data_type": "image", "question": QUESTIONS[kind], "answer": letter,
                            **{f"choice_{k.lower()}": v for k, v in options.items()}})
            text_qs.append({"question_id": qid, "image_id": key, "question": QUESTIONS[kind],
                            "answers": _annotators(answers[kind]), "set_name": "val"})
            doc_qs.append({"questionId": qid, "question": QUESTIONS[kind], "image": f"documents/{key}.png",
                           "answers": [answers[kind], f"the {answers[kind]}"], "question_types": [kind]})
    with open(out / "mmbench/MMBench_DEV_EN.tsv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(tsv_rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(tsv_rows)
    (out / "seed/SEED-Bench.json").write_text(json.dumps({"questions": seed_qs, "question_type": TYPES}))
    (out / "textvqa/TextVQA_0.5.1_val.json").write_text(json.dumps({"dataset_name": "textvqa", "data": text_qs}))
    (out / "docvqa/val_v1.0.json").write_text(json.dumps({"dataset_name": "docvqa", "data": doc_qs}))
    return {"mmbench": len(tsv_rows), "seed": len(seed_qs), "textvqa": len(text_qs), "docvqa": len(doc_qs)}
