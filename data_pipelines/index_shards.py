"""Write `index.json` (shards, sample keys and counts) beside WebDataset shards written
elsewhere — img2dataset, LAION, CC3M — so that `data.subset=N` (the first N samples) and the
sample counts work on them. Only the tar headers are read.

    python data_pipelines/index_shards.py --shards 'data/laion/{00000..00099}.tar' --split train
"""

from __future__ import annotations

import argparse
import json

from eelight.data.loader import expand_urls
from eelight.data.shards import index_shards
from eelight.errors import run_script


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="local shard paths, brace-expanded")
    parser.add_argument("--split", default="train", help="the split's name in index.json")
    args = parser.parse_args(argv)
    urls = expand_urls(args.shards)  # a path that matches no file is named (FileNotFoundError)
    written = index_shards(urls, args.split, args.shards)
    print(json.dumps({folder: {"samples": s["samples"], "shards": len(s["shards"]), "bad": s["bad"]}
                      for folder, s in written.items()}))


if __name__ == "__main__":
    run_script(main, "index_shards.py")
