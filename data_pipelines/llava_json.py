"""LLaVA-style JSON + image folder -> WebDataset shards (LLaVA-558K / LLaVA-665K layout).

    python data_pipelines/llava_json.py --json llava_v1_5_mix665k.json --images /data/coco_etc \\
        --out data/llava665k --prefix train --shard-size 5000

Text-only, missing, unreadable and malformed entries are skipped and counted in index.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eelight.data.convert import add_output_args, llava_samples, run_cli
from eelight.errors import UserError, run_script


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="LLaVA JSON: a list of {id, image, conversations}")
    parser.add_argument("--images", required=True, help="folder the records' `image` paths are relative to")
    add_output_args(parser)
    args = parser.parse_args(argv)
    try:
        records = json.loads(Path(args.json).read_text())
    except json.JSONDecodeError as exn:
        raise UserError(f"{args.json} is not JSON ({exn}); pass the LLaVA JSON list of records") from exn
    if not isinstance(records, list):
        parser.error(f"{args.json} must hold a JSON list of records")
    run_cli(llava_samples, records, args.images, args)


if __name__ == "__main__":
    run_script(main, "llava_json.py")
