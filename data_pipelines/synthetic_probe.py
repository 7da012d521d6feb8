"""Build the graded synthetic probe: scenes of seven task families (attribute, small, count,
relation, compare, reading, document; `eelight/data/families.py`) with captions (align) and
question-answer conversations (instruct), one held-out split per family, a word-level
tokenizer, and index.json.

    python data_pipelines/synthetic_probe.py --out data/probe --train 4000 --eval 400
    python data_pipelines/synthetic_probe.py --out data/easy --families attribute,small
"""

from __future__ import annotations

import argparse
import json

from eelight.data.probe import build_probe
from eelight.errors import run_script


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder for shards, tokenizer/ and index.json")
    parser.add_argument("--train", type=int, default=4000, help="training samples (100 to 1M)")
    parser.add_argument("--eval", type=int, default=400, help="held-out scenes per family")
    parser.add_argument("--families", default=None, help="comma-separated families (default: all seven)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    args = parser.parse_args(argv)
    families = args.families.split(",") if args.families else None
    try:
        splits = build_probe(args.out, args.train, args.eval, args.seed, args.image_size, args.shard_size, families)
    except ValueError as exn:
        parser.error(str(exn))  # one line, exit status 2
    print(json.dumps({k: {"samples": v["samples"], "pattern": v["pattern"]} for k, v in splits.items()}))


if __name__ == "__main__":
    run_script(main, "synthetic_probe.py")
