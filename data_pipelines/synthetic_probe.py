"""Build the synthetic probe: coloured-shape images with captions (align) and question-answer
conversations (instruct), a held-out eval split, a word-level tokenizer, and index.json.

    python data_pipelines/synthetic_probe.py --out data/probe --train 4000 --eval 400
"""

from __future__ import annotations

import argparse
import json

from eelight.data.probe import build_probe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder for shards, tokenizer/ and index.json")
    parser.add_argument("--train", type=int, default=4000, help="training samples (100 to 1M)")
    parser.add_argument("--eval", type=int, default=400, help="held-out eval samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    args = parser.parse_args(argv)
    splits = build_probe(args.out, args.train, args.eval, args.seed, args.image_size, args.shard_size)
    print(json.dumps({k: {"samples": v["samples"], "pattern": v["pattern"]} for k, v in splits.items()}))


if __name__ == "__main__":
    main()
