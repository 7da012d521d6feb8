"""Folder of images + captions.jsonl -> WebDataset shards (align-stage captions).

    python data_pipelines/folder_jsonl.py --images photos/ --captions photos/captions.jsonl --out data/photos

Each line of the JSONL is {"file": "relative/path.jpg", "caption": "..."} (other keys are kept
as metadata). Missing, unreadable and malformed entries are skipped and counted in index.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eelight.data.convert import add_output_args, jsonl_samples, run_cli
from eelight.errors import run_script


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="folder the `file` paths are relative to")
    parser.add_argument("--captions", required=True, help="JSONL with one {file, caption} a line")
    add_output_args(parser)
    args = parser.parse_args(argv)
    lines = [line for line in Path(args.captions).read_text().splitlines() if line.strip()]
    run_cli(jsonl_samples, lines, args.images, args)


if __name__ == "__main__":
    run_script(main, "folder_jsonl.py")
