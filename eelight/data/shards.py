"""Writing WebDataset shards (`{key}.png|jpg` + `{key}.txt` and/or `{key}.json`) with a
manifest `index.json` beside them (shards, per-shard sample keys and counts, bad counts);
`index_shards` writes the manifest for shards written elsewhere (img2dataset, LAION)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from eelight.errors import UserError


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
    pattern = f"{prefix}-{{{0:06d}..{len(shards) - 1:06d}}}.tar" if shards else ""
    return _record_split(out, prefix, shards, dict(bad_counts or {}), pattern)


def _record_split(out: Path, split: str, shards: list[dict[str, Any]], bad: dict[str, int],
                  pattern: str) -> dict[str, Any]:
    """Add (or replace) one split in `out/index.json`, keeping the others; atomic."""
    index_path = out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"splits": {}}
    index["splits"][split] = {"shards": shards, "samples": sum(s["count"] for s in shards), "bad": bad,
                              "pattern": pattern}
    tmp = index_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(index_path)
    return index["splits"][split]


def tar_keys(path: str | Path) -> tuple[list[str], bool]:
    """The sample keys of one tar shard (plain or compressed) in order, with webdataset's key
    rule, and whether the shard is cut short. A plain tar is read by its headers only (the data
    is seeked over). As in webdataset, a sample is kept when one of its members is whole."""
    from webdataset.tariterators import base_plus_ext

    keys: list[str] = []
    size = Path(path).stat().st_size
    try:
        with tarfile.open(path, "r:*") as tar:
            plain = isinstance(tar.fileobj, io.BufferedReader)  # else gzip/bz2/xz: offsets are not bytes
            for member in tar:
                key, _ = base_plus_ext(member.name)
                if not member.isfile() or key is None:
                    continue
                if plain and member.offset_data + member.size > size:  # this member is cut off
                    return keys, True
                if not plain:  # a compressed stream is read through anyway; a cut-off member raises
                    tar.extractfile(member).read()
                if not keys or keys[-1] != key:
                    keys.append(key)
            end = tar.offset  # after the last member; a whole tar has two zero blocks there
    except (tarfile.TarError, EOFError, OSError):  # a compressed stream cut short ends here
        return keys, True
    if not plain:
        return keys, False
    with open(path, "rb") as f:
        f.seek(end)
        tail = f.read(2 * tarfile.BLOCKSIZE)
    return keys, len(tail) < 2 * tarfile.BLOCKSIZE or any(tail)


def index_shards(urls: list[str], split: str = "train", pattern: str = "") -> dict[str, dict[str, Any]]:
    """Write the manifest of existing local shards (one `index.json` per folder, split `split`),
    so that `data.subset` and the sample counts work on shard sets eelight did not write.
    Returns the split written, by folder."""
    by_folder: dict[Path, list[dict[str, Any]]] = {}
    bad: dict[Path, int] = {}
    for url in urls:
        path = Path(url.removeprefix("file:"))
        if not path.is_file():
            raise FileNotFoundError(f"shard {url} does not exist (only local shards can be indexed)")
        keys, truncated = tar_keys(path)
        by_folder.setdefault(path.parent, []).append({"path": path.name, "count": len(keys), "keys": keys})
        bad[path.parent] = bad.get(path.parent, 0) + truncated
    return {str(folder): _record_split(folder, split, shards, {"tar": bad[folder]} if bad[folder] else {},
                                       Path(pattern).name if pattern else "")
            for folder, shards in by_folder.items()}


def read_manifest(shard_dir: str | Path) -> dict[str, Any]:
    path = Path(shard_dir) / "index.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: shard folders written by data_pipelines/ have one; for other shards "
            f"(img2dataset, LAION) write it with python data_pipelines/index_shards.py --shards '<pattern>'"
        )
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exn:  # JSONDecodeError, UnicodeDecodeError
        raise ManifestError(f"{path} is not valid JSON ({exn}); rewrite it with python "
                            "data_pipelines/index_shards.py --shards '<pattern>'") from exn
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise ManifestError(f"{path} has no `splits` object; rewrite it with python data_pipelines/index_shards.py "
                            "--shards '<pattern>'")
    return manifest


class ManifestError(UserError, ValueError):
    """A shard folder's index.json that is missing what the loader needs: names the file and the fix."""
