"""`make demo`: the whole pipeline on the embedded default, on a CPU.

Builds the synthetic probe shards and tokenizer, builds (or reuses) the tiny
pretrained backbones, trains a tiny EE-MLLM align -> instruct, scores it on the
held-out probe through each benchmark's path (`eelight eval`: the probe itself and
its MMBench / SEED-Bench / TextVQA / DocVQA files), and says where the MLflow runs
and checkpoints are. Extra dot-list overrides apply to both stages:
`python -m eelight.demo model_preset=llava`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

PROBE = Path("data/probe")
BACKBONES = Path(".cache/backbones")
EXPERIMENT = "experiments/ee_mllm_tiny.yaml"
EVAL_IMAGES = 200
BENCHMARK_FILES = PROBE / "benchmarks"
BENCHMARKS = ("probe", "mmbench", "seed", "textvqa", "docvqa")


def prepare() -> None:
    """The probe shards, tokenizer and benchmark files, and the tiny pretrained backbones (cached)."""
    from eelight.data.probe import VERSION, build_probe, eval_shards, probe_version
    from eelight.eval.probe_files import write_probe_benchmarks
    from eelight.training.backbones import build_backbones

    rebuilt = probe_version(str(PROBE)) != VERSION  # none yet, or written by an older generator
    if rebuilt:
        print(f"[demo] building the synthetic probe in {PROBE}", flush=True)
        build_probe(str(PROBE), n_train=4000, n_eval=400, seed=0)
    if rebuilt or not (BENCHMARK_FILES / "docvqa" / "val_v1.0.json").exists():  # what the study scores
        write_probe_benchmarks(eval_shards(str(PROBE)), BENCHMARK_FILES, EVAL_IMAGES)
    build_backbones(PROBE, BACKBONES)


def _chance() -> str:
    from eelight.data.families import CHANCE

    return ", ".join(f"{family} {p:.0%}" for family, p in CHANCE.items())


def main(overrides: list[str] | None = None) -> dict:
    from eelight.tracking import tracking_uri
    from eelight.training.config import load_run_config
    from eelight.training.run import train

    overrides = list(sys.argv[1:] if overrides is None else overrides)
    start = time.perf_counter()
    prepare()
    align_cfg = load_run_config([EXPERIMENT], overrides)
    print(f"[demo] align stage: {align_cfg.trainer.max_steps} steps ({time.perf_counter() - start:.0f}s)", flush=True)
    align = train(align_cfg)
    instruct_cfg = load_run_config([EXPERIMENT, "experiments/stages/instruct.yaml"],
                                   overrides + [f"init_from={align['checkpoint']}"])
    print(f"[demo] instruct stage: {instruct_cfg.trainer.max_steps} steps "
          f"({time.perf_counter() - start:.0f}s)", flush=True)
    instruct = train(instruct_cfg)

    from eelight.evaluate.command import main as evaluate
    print(f"\n[demo] held-out probe ({EVAL_IMAGES} scenes of each family) through each benchmark's path "
          f"({time.perf_counter() - start:.0f}s so far); chance: {_chance()}", flush=True)
    scores = evaluate(str(instruct_cfg.run_dir), [f"benchmarks=[{','.join(BENCHMARKS)}]",
                                                  f"eval.data_root={BENCHMARK_FILES}", f"data.val_samples={EVAL_IMAGES}"])
    print(f"[demo] {time.perf_counter() - start:.0f}s in all")
    uri, _ = tracking_uri(instruct_cfg)
    print(f"\n[demo] MLflow store: {uri} (experiment '{instruct_cfg.mlflow.experiment}', runs "
          f"{align['mlflow_run_id']} and {instruct['mlflow_run_id']})")
    print(f"[demo] checkpoints: {align['checkpoint']}\n                    {instruct['checkpoint']}")
    print("[demo] open the UI with: make mlflow-ui   (then http://127.0.0.1:5000)")
    return {"metrics": scores["metrics"], "align": align, "instruct": instruct}


if __name__ == "__main__":
    from eelight.errors import run_script

    run_script(prepare if sys.argv[1:] == ["--prepare-only"] else main, "eelight demo")
