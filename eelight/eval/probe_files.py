"""The held-out probe written out in the four benchmarks' official formats, so that the whole
evaluation path (files, prompts, answer extraction, metrics) runs end to end on a CPU, and
the study's objective is a benchmark metric:

    <out>/mmbench/MMBench_DEV_EN.tsv        the multiple-choice families (attribute, small,
                                            count, relation, compare): options in a seeded
                                            random order, base64 PNG; l2-category = family
    <out>/seed/SEED-Bench.json + images/    the families with at least 4 answers (attribute,
                                            small, count): choice_a..d; question type = family
    <out>/textvqa/TextVQA_0.5.1_val.json    reading: 10 answers per question
              + train_images/<id>.jpg
    <out>/docvqa/val_v1.0.json + documents/ document: the table's value

The first `n_images` held-out scenes of each family (the ones the `probe` benchmark reads).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import random
from pathlib import Path

from PIL import Image

MULTIPLE_CHOICE = ("attribute", "small", "count", "relation", "compare")
FOUR_CHOICES = ("attribute", "small", "count")


def _annotators(answer: str) -> list[str]:
    """Ten answers as people write them: some add an article, which the EvalAI
    normalisation removes again."""
    return [answer] * 8 + [f"the {answer}"] * 2


def write_probe_benchmarks(shards: str, out: str | Path, n_images: int = 200, seed: int = 0) -> dict[str, int]:
    """Write the four files (and their images); returns questions per benchmark."""
    from eelight.data.families import FAMILIES, Question, options
    from eelight.eval.probe import probe_scenes

    out = Path(out)
    for sub in ("mmbench", "seed/images", "textvqa/train_images", "docvqa/documents"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    types = {f: i + 1 for i, f in enumerate(FOUR_CHOICES)}
    tsv_rows, seed_qs, text_qs, doc_qs = [], [], [], []
    for key, png, family, questions, _ in probe_scenes(shards, n_images):
        for q in questions:
            question = Question(q["kind"], q["text"], q["answer"], tuple(q["space"]))
            qid = len(tsv_rows) + len(text_qs) + len(doc_qs)
            if family in MULTIPLE_CHOICE:
                shown = options(question, rng)
                letter = next(k for k, v in shown.items() if v == question.answer)
                tsv_rows.append({"index": qid, "question": question.text, "hint": "",
                                 **{k: shown.get(k, "") for k in "ABCD"}, "answer": letter, "category": q["kind"],
                                 "l2-category": family, "split": "dev", "image": base64.b64encode(png).decode()})
                if family in FOUR_CHOICES:
                    (out / "seed/images" / f"{key}.png").write_bytes(png)
                    seed_qs.append({"question_id": str(qid), "question_type_id": types[family], "data_id": f"{key}.png",
                                    "data_type": "image", "question": question.text, "answer": letter,
                                    **{f"choice_{k.lower()}": v for k, v in shown.items()}})
            elif family == "reading":
                buf = io.BytesIO()
                Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="JPEG", quality=95)
                (out / "textvqa/train_images" / f"{key}.jpg").write_bytes(buf.getvalue())
                text_qs.append({"question_id": qid, "image_id": key, "question": question.text,
                                "answers": _annotators(question.answer), "set_name": "val"})
            elif family == "document":
                (out / "docvqa/documents" / f"{key}.png").write_bytes(png)
                doc_qs.append({"questionId": qid, "question": question.text, "image": f"documents/{key}.png",
                               "answers": [question.answer], "question_types": ["table/list"]})
    assert set(MULTIPLE_CHOICE) | {"reading", "document"} == set(FAMILIES)
    if tsv_rows:
        with open(out / "mmbench/MMBench_DEV_EN.tsv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(tsv_rows[0]), delimiter="\t")
            writer.writeheader()
            writer.writerows(tsv_rows)
    if seed_qs:
        (out / "seed/SEED-Bench.json").write_text(json.dumps({"questions": seed_qs, "question_type": types}))
    if text_qs:
        (out / "textvqa/TextVQA_0.5.1_val.json").write_text(json.dumps({"dataset_name": "textvqa", "data": text_qs}))
    if doc_qs:
        (out / "docvqa/val_v1.0.json").write_text(json.dumps({"dataset_name": "docvqa", "data": doc_qs}))
    return {"mmbench": len(tsv_rows), "seed": len(seed_qs), "textvqa": len(text_qs), "docvqa": len(doc_qs)}
