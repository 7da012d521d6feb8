"""Folder of images + captions.jsonl -> WebDataset shards (align-stage captions).

    python data_pipelines/folder_jsonl.py --images photos/ --captions photos/captions.jsonl --out data/photos

Each line of the JSONL is {"file": "relative/path.jpg", "caption": "..."} (other keys are kept
as metadata). Missing, unreadable and malformed entries are skipped and counted in index.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eelight.data.convert import convert, jsonl_samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="folder the `file` paths are relative to")
    parser.add_argument("--captions", required=True, help="JSONL with one {file, caption} a line")
    parser.add_argument("--out", required=True, help="output folder (shards + index.json)")
    parser.add_argument("--prefix", default="train")
    parser.add_argument("--shard-size", type=int, default=5000, help="samples per shard")
    parser.add_argument("--shard-bytes", type=int, default=1 << 30, help="bytes per shard")
    args = parser.parse_args(argv)
    lines = [line for line in Path(args.captions).read_text().splitlines() if line.strip()]
    split = convert(jsonl_samples, lines, args.images, args.out, args.prefix, args.shard_size, args.shard_bytes)
    print(json.dumps({"samples": split["samples"], "shards": len(split["shards"]), "bad": split["bad"],
                      "pattern": split["pattern"]}))


if __name__ == "__main__":
    main()
