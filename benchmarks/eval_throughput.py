"""Evaluation throughput of the demo model (`make demo` first: runs/ee_mllm_tiny/instruct and
data/probe/benchmarks), side by side in one run:

- MMBench (probe file) greedy generation at batch 1 vs batch 16, questions/s;
- the cost of CircularEval: all rotations vs the first pass only (the same questions);
- SEED-Bench likelihood ranking (4 forward passes a question, no decoding) vs generation.

    .venv/bin/python benchmarks/eval_throughput.py [--questions 200]
"""

from __future__ import annotations

import argparse
import time

import torch

from eelight.data.image import FastImageTransform
from eelight.data.text import template
from eelight.eval.mmbench import ROTATION, MMBench
from eelight.eval.runner import Asker, generate_answers, likelihood_answers
from eelight.eval.seed import SeedBench
from eelight.evaluate.target import load_target

ROOT = "data/probe/benchmarks"


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/ee_mllm_tiny/instruct")
    parser.add_argument("--questions", type=int, default=200, help="MMBench questions (x4 rotations)")
    args = parser.parse_args()
    target = load_target(args.run, [])

    def asker(batch: int) -> Asker:
        return Asker(target.model, target.tokenizer, FastImageTransform(target.processor),
                     template(target.template), target.placement, batch, max_new_tokens=16)

    circular = MMBench(f"{ROOT}/mmbench/MMBench_DEV_EN.tsv", limit=args.questions).load()
    first = [i for i in circular if int(i.qid) < ROTATION]
    print(f"torch threads {torch.get_num_threads()}; {len(first)} MMBench questions, {len(circular)} with rotations")
    generate_answers(asker(16), first[:16], "mmbench")  # warm-up
    rows = []
    for label, items, batch in [("MMBench first pass, batch 1", first, 1), ("MMBench first pass, batch 16", first, 16),
                                ("MMBench CircularEval, batch 16", circular, 16)]:
        seconds, _ = timed(generate_answers, asker(batch), items, "mmbench")
        rows.append((label, len(items), seconds))
    seed = SeedBench(f"{ROOT}/seed/SEED-Bench.json", f"{ROOT}/seed/images", limit=len(first)).load()
    seconds, _ = timed(likelihood_answers, asker(16), seed, "seed")
    rows.append(("SEED likelihood (4 choices), batch 16", len(seed), seconds))
    seconds, _ = timed(generate_answers, asker(16), seed, "seed")
    rows.append(("SEED generation, batch 16", len(seed), seconds))
    print(f"{'what':40s} {'asked':>6s} {'seconds':>8s} {'rows/s':>8s} {'questions/s':>12s}")
    for label, n, seconds in rows:
        questions = n // 4 if "Circular" in label else n
        print(f"{label:40s} {n:6d} {seconds:8.2f} {n / seconds:8.1f} {questions / seconds:12.1f}")
    print(f"batch 16 / batch 1 speed-up: {rows[0][2] / rows[1][2]:.2f}x; "
          f"CircularEval / first pass time: {rows[2][2] / rows[1][2]:.2f}x "
          f"({len(circular) / len(first):.1f} passes a question)")


if __name__ == "__main__":
    main()
