"""Write the held-out probe in the four benchmarks' official formats (MMBench TSV, SEED-Bench
JSON + images, TextVQA JSON with 10 answers + images, DocVQA JSON + documents), so that
`eelight eval` runs every benchmark's path end to end on a CPU:

    python data_pipelines/probe_benchmarks.py --shards 'data/probe/eval-{attribute,small,count,relation,compare,reading,document}-000000.tar' --out data/probe/benchmarks
    eelight eval runs/ee_mllm_tiny/instruct benchmarks=[mmbench,seed,textvqa,docvqa]
"""

from __future__ import annotations

import argparse
import json

from eelight.errors import run_script
from eelight.eval.probe_files import write_probe_benchmarks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="data/probe/eval-{attribute,small,count,relation,compare,reading,document}-000000.tar", help="the probe's held-out shards")
    parser.add_argument("--out", default="data/probe/benchmarks", help="folder for one subfolder per benchmark")
    parser.add_argument("--images", type=int, default=200, help="held-out scenes per family")
    parser.add_argument("--seed", type=int, default=0, help="seeds the order of the options")
    args = parser.parse_args(argv)
    print(json.dumps(write_probe_benchmarks(args.shards, args.out, args.images, args.seed)))


if __name__ == "__main__":
    run_script(main, "probe_benchmarks.py")
