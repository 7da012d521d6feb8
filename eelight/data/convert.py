"""Converters from common layouts to WebDataset shards (used by `data_pipelines/`).

- LLaVA JSON (LLaVA-558K / LLaVA-665K): `[{"id", "image": "rel/path.jpg", "conversations": [...]}]`
  plus an image folder. A single-exchange conversation also gets its answer as the `.txt`
  caption (the align stage's LLaVA-558K captions).
- A folder of images plus `captions.jsonl` (`{"file": "rel/path.jpg", "caption": "..."}` a line).

Image bytes are copied as they are (no re-encoding), after a full decode: a file whose header
is fine but whose data is cut short (a truncated JPEG passes PIL's `verify()`) is skipped here,
not at training time. Entries that cannot become a sample (no image, missing, unreadable or
truncated file, bad record) are skipped and counted in the manifest; `--report FILE` lists
each one (index in the source, id, reason, detail) as JSON lines.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from eelight.data.shards import Sample, write_shards

EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


@dataclass
class Skipped:
    """What a conversion left out: counts by reason, and each entry for `--report`."""

    counts: Counter = field(default_factory=Counter)
    entries: list[dict[str, Any]] = field(default_factory=list)

    def add(self, reason: str, index: int, ident: Any, detail: str = "") -> None:
        self.counts[reason] += 1
        self.entries.append({"index": index, "id": ident, "reason": reason, **({"detail": detail} if detail else {})})


def _read_image(path: Path, index: int, ident: Any, skipped: Skipped) -> tuple[bytes, str] | None:
    ext = EXTS.get(path.suffix.lower())
    if ext is None:
        skipped.add("unsupported_format", index, ident, str(path))
        return None
    if not path.is_file():
        skipped.add("missing_image", index, ident, str(path))
        return None
    data = path.read_bytes()
    try:
        with Image.open(path) as im:
            im.load()  # every pixel: a truncated file fails here, as it would in training
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exn:
        skipped.add("unreadable_image", index, ident, f"{path}: {exn}")
        return None
    return data, ext


def _key(i: int, raw_id: Any) -> str:
    # webdataset splits keys at the first '.', so ids such as "000000033471.jpg" are made safe.
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(raw_id))
    return f"{i:08d}_{safe}"[:120]


def llava_samples(records: list[dict], image_root: Path, skipped: Skipped) -> Iterator[Sample]:
    for i, rec in enumerate(records):
        ident = rec.get("id") if isinstance(rec, dict) else None
        if not isinstance(rec, dict):
            skipped.add("bad_record", i, None, "not a JSON object")
            continue
        convs = rec.get("conversations")
        if "image" not in rec:
            skipped.add("no_image", i, ident)  # LLaVA-665K's text-only samples
            continue
        if not isinstance(convs, list) or not any(isinstance(t, dict) and t.get("from") == "gpt" for t in convs):
            skipped.add("bad_record", i, ident, "no `conversations` list with a gpt turn")
            continue
        image = _read_image(image_root / rec["image"], i, ident, skipped)
        if image is None:
            continue
        answers = [t["value"] for t in convs if t.get("from") == "gpt"]
        yield Sample(key=_key(i, rec.get("id", i)), image=image[0], image_ext=image[1],
                     caption=answers[0] if len(convs) == 2 else None, conversations=convs,
                     meta={"id": rec.get("id"), "image": rec["image"]})


def jsonl_samples(lines: list[str], image_root: Path, skipped: Skipped) -> Iterator[Sample]:
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
            file, caption = rec["file"], rec["caption"]
        except (json.JSONDecodeError, KeyError, TypeError) as exn:
            skipped.add("bad_record", i, None, f"line {i + 1}: {type(exn).__name__}: {exn}")
            continue
        image = _read_image(image_root / file, i, file, skipped)
        if image is None:
            continue
        yield Sample(key=_key(i, Path(file).stem), image=image[0], image_ext=image[1], caption=caption,
                     meta={k: v for k, v in rec.items() if k != "caption"})


def convert(samples_fn, source: list, image_root: str | Path, out_dir: str | Path, prefix: str,
            max_count: int, max_bytes: int, report: str | Path | None = None) -> dict[str, Any]:
    skipped = Skipped()
    samples = samples_fn(source, Path(image_root), skipped)
    # write_shards consumes the generator before it writes the manifest, so `skipped` is complete.
    split = write_shards(samples, out_dir, prefix, max_count=max_count, max_bytes=max_bytes,
                         bad_counts=skipped.counts)
    if report is not None:
        Path(report).write_text("".join(json.dumps(e) + "\n" for e in skipped.entries))
    return split


def add_output_args(parser) -> None:
    """The output options every converter CLI shares."""
    parser.add_argument("--out", required=True, help="output folder (shards + index.json)")
    parser.add_argument("--prefix", default="train")
    parser.add_argument("--shard-size", type=int, default=5000, help="samples per shard")
    parser.add_argument("--shard-bytes", type=int, default=1 << 30, help="bytes per shard")
    parser.add_argument("--report", default=None, help="write each skipped entry (index, id, reason) to this JSONL")


def run_cli(samples_fn, source: list, image_root: str, args) -> None:
    """Convert and print a one-line JSON summary (samples, shards, skipped counts, pattern)."""
    split = convert(samples_fn, source, image_root, args.out, args.prefix, args.shard_size, args.shard_bytes,
                    args.report)
    print(json.dumps({"samples": split["samples"], "shards": len(split["shards"]), "bad": split["bad"],
                      "pattern": split["pattern"]}))
