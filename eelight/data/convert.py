"""Converters from common layouts to WebDataset shards (used by `data_pipelines/`).

- LLaVA JSON (LLaVA-558K / LLaVA-665K): `[{"id", "image": "rel/path.jpg", "conversations": [...]}]`
  plus an image folder. A single-exchange conversation also gets its answer as the `.txt`
  caption (the align stage's LLaVA-558K captions).
- A folder of images plus `captions.jsonl` (`{"file": "rel/path.jpg", "caption": "..."}` a line).

Image bytes are copied as they are (no re-encoding). Entries that cannot become a sample
(no image, missing or unreadable file, bad record) are skipped and counted in the manifest.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from eelight.data.shards import Sample, write_shards

EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


def _read_image(path: Path, bad: Counter) -> tuple[bytes, str] | None:
    ext = EXTS.get(path.suffix.lower())
    if ext is None:
        bad["unsupported_format"] += 1
        return None
    if not path.is_file():
        bad["missing_image"] += 1
        return None
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError):
        bad["unreadable_image"] += 1
        return None
    return path.read_bytes(), ext


def _key(i: int, raw_id: Any) -> str:
    # webdataset splits keys at the first '.', so ids such as "000000033471.jpg" are made safe.
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(raw_id))
    return f"{i:08d}_{safe}"[:120]


def llava_samples(records: list[dict], image_root: Path, bad: Counter) -> Iterator[Sample]:
    for i, rec in enumerate(records):
        convs = rec.get("conversations")
        if "image" not in rec:
            bad["no_image"] += 1  # LLaVA-665K's text-only samples
            continue
        if not isinstance(convs, list) or not any(t.get("from") == "gpt" for t in convs):
            bad["bad_record"] += 1
            continue
        image = _read_image(image_root / rec["image"], bad)
        if image is None:
            continue
        answers = [t["value"] for t in convs if t.get("from") == "gpt"]
        yield Sample(key=_key(i, rec.get("id", i)), image=image[0], image_ext=image[1],
                     caption=answers[0] if len(convs) == 2 else None, conversations=convs,
                     meta={"id": rec.get("id"), "image": rec["image"]})


def jsonl_samples(lines: list[str], image_root: Path, bad: Counter) -> Iterator[Sample]:
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
            file, caption = rec["file"], rec["caption"]
        except (json.JSONDecodeError, KeyError, TypeError):
            bad["bad_record"] += 1
            continue
        image = _read_image(image_root / file, bad)
        if image is None:
            continue
        yield Sample(key=_key(i, Path(file).stem), image=image[0], image_ext=image[1], caption=caption,
                     meta={k: v for k, v in rec.items() if k != "caption"})


def convert(samples_fn, source: list, image_root: str | Path, out_dir: str | Path, prefix: str,
            max_count: int, max_bytes: int) -> dict[str, Any]:
    bad: Counter = Counter()
    samples = samples_fn(source, Path(image_root), bad)
    # write_shards consumes the generator before it writes the manifest, so `bad` is complete.
    return write_shards(samples, out_dir, prefix, max_count=max_count, max_bytes=max_bytes, bad_counts=bad)


def add_output_args(parser) -> None:
    """The output options every converter CLI shares."""
    parser.add_argument("--out", required=True, help="output folder (shards + index.json)")
    parser.add_argument("--prefix", default="train")
    parser.add_argument("--shard-size", type=int, default=5000, help="samples per shard")
    parser.add_argument("--shard-bytes", type=int, default=1 << 30, help="bytes per shard")


def run_cli(samples_fn, source: list, image_root: str, args) -> None:
    """Convert and print a one-line JSON summary (samples, shards, skipped counts, pattern)."""
    split = convert(samples_fn, source, image_root, args.out, args.prefix, args.shard_size, args.shard_bytes)
    print(json.dumps({"samples": split["samples"], "shards": len(split["shards"]), "bad": split["bad"],
                      "pattern": split["pattern"]}))
