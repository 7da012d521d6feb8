"""LLaVA-style JSON + image folder -> WebDataset shards (LLaVA-558K / LLaVA-665K layout).

    python data_pipelines/llava_json.py --json llava_v1_5_mix665k.json --images /data/coco_etc \\
        --out data/llava665k --prefix train --shard-size 5000

Text-only, missing, unreadable and malformed entries are skipped and counted in index.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eelight.data.convert import convert, llava_samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="LLaVA JSON: a list of {id, image, conversations}")
    parser.add_argument("--images", required=True, help="folder the records' `image` paths are relative to")
    parser.add_argument("--out", required=True, help="output folder (shards + index.json)")
    parser.add_argument("--prefix", default="train")
    parser.add_argument("--shard-size", type=int, default=5000, help="samples per shard")
    parser.add_argument("--shard-bytes", type=int, default=1 << 30, help="bytes per shard")
    args = parser.parse_args(argv)
    records = json.loads(Path(args.json).read_text())
    if not isinstance(records, list):
        parser.error(f"{args.json} must hold a JSON list of records")
    split = convert(llava_samples, records, args.images, args.out, args.prefix, args.shard_size, args.shard_bytes)
    print(json.dumps({"samples": split["samples"], "shards": len(split["shards"]), "bad": split["bad"],
                      "pattern": split["pattern"]}))


if __name__ == "__main__":
    main()
