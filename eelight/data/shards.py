"""Writing WebDataset shards (`{key}.png|jpg` + `{key}.txt` and/or `{key}.json`) with a
manifest `index.json` beside them (shards, per-shard sample keys and counts, bad counts)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


@dataclass
class Sample:
    key: str
    image: Image.Image | bytes  # a PIL image (encoded as `image_format`) or already-encoded bytes
    caption: str | None = None
    conversations: list[dict] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    image_ext: str = "png"


def encode_image(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG" if fmt == "jpg" else fmt.upper(), **({"quality": 95} if fmt == "jpg" else {}))
    return buf.getvalue()


def write_shards(
    samples: Iterable[Sample],
    out_dir: str | Path,
    prefix: str = "train",
    max_count: int = 1000,
    max_bytes: int = 1 << 30,
    bad_counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Write `prefix-000000.tar`, ...; a new shard starts at max_count samples or max_bytes.
    Returns (and writes to `out_dir/index.json`, merged with earlier prefixes) the manifest."""
    import webdataset as wds

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    with wds.ShardWriter(str(out / f"{prefix}-%06d.tar"), maxcount=max_count, maxsize=max_bytes,
                         verbose=0) as writer:
        for sample in samples:
            record: dict[str, Any] = {"__key__": sample.key}
            data = sample.image if isinstance(sample.image, bytes) else encode_image(sample.image, sample.image_ext)
            record[sample.image_ext] = data
            if sample.caption is not None:
                record["txt"] = sample.caption
            if sample.conversations is not None or sample.meta:
                record["json"] = json.dumps({**sample.meta, **(
                    {"conversations": sample.conversations} if sample.conversations is not None else {})})
            writer.write(record)
            name = Path(writer.fname).name
            if not shards or shards[-1]["path"] != name:
                shards.append({"path": name, "count": 0, "keys": []})
            shards[-1]["count"] += 1
            shards[-1]["keys"].append(sample.key)
    index_path = out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"splits": {}}
    index["splits"][prefix] = {
        "shards": shards,
        "samples": sum(s["count"] for s in shards),
        "bad": dict(bad_counts or {}),
        "pattern": f"{prefix}-{{{0:06d}..{len(shards) - 1:06d}}}.tar" if shards else "",
    }
    index_path.write_text(json.dumps(index, indent=1))
    return index["splits"][prefix]


def read_manifest(shard_dir: str | Path) -> dict[str, Any]:
    path = Path(shard_dir) / "index.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: shard folders written by data_pipelines/ have one")
    return json.loads(path.read_text())
