"""`make demo`: the whole pipeline on the embedded default, on a CPU.

Builds the synthetic probe shards and tokenizer, builds (or reuses) the tiny
pretrained backbones, trains a tiny EE-MLLM align -> instruct, evaluates probe
accuracy on held-out images against chance, and says where the MLflow runs and
checkpoints are. Extra dot-list overrides apply to both stages:
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


def prepare() -> None:
    """The probe shards and tokenizer, and the tiny pretrained backbones (both cached)."""
    from eelight.data.probe import build_probe
    from eelight.training.backbones import build_backbones

    if not (PROBE / "index.json").exists():
        print(f"[demo] building the synthetic probe in {PROBE}", flush=True)
        build_probe(str(PROBE), n_train=4000, n_eval=400, seed=0)
    build_backbones(PROBE, BACKBONES)


def main(overrides: list[str] | None = None) -> dict:
    from eelight.data.tokenizer import load_tokenizer
    from eelight.eval.probe_eval import chance_levels, evaluate_probe, probe_questions
    from eelight.models.vision import image_processor
    from eelight.training.config import load_run_config
    from eelight.training.run import mlflow_uri, train

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

    from eelight.models.mllm import build_mllm
    from eelight.training.checkpoint import init_from_checkpoint

    model = build_mllm(instruct_cfg.model)
    init_from_checkpoint(model, instruct["checkpoint"])
    tok = load_tokenizer(instruct_cfg.data.tokenizer)
    processor = image_processor(instruct_cfg.model.vision, model.vision.image_size)
    questions = probe_questions(instruct_cfg.data.val_shards, tok, processor, instruct_cfg.data.template, EVAL_IMAGES,
                                instruct_cfg.data.image_placement)
    acc = evaluate_probe(model.eval(), questions, tok.pad_token_id)
    chance = chance_levels()
    print(f"\n[demo] held-out probe accuracy ({EVAL_IMAGES} images x 4 questions), "
          f"{time.perf_counter() - start:.0f}s in all:")
    print(f"  {'question':10s} {'accuracy':>9s} {'chance':>7s} {'x chance':>9s}")
    for kind, value in acc.items():
        print(f"  {kind:10s} {value:9.1%} {chance[kind]:7.0%} {value / chance[kind]:9.1f}")
    uri, _ = mlflow_uri(instruct_cfg)
    print(f"\n[demo] MLflow store: {uri} (experiment '{instruct_cfg.mlflow.experiment}', runs "
          f"{align['mlflow_run_id']} and {instruct['mlflow_run_id']})")
    print(f"[demo] checkpoints: {align['checkpoint']}\n                    {instruct['checkpoint']}")
    print("[demo] open the UI with: make mlflow-ui   (then http://127.0.0.1:5000)")
    return {"accuracy": acc, "align": align, "instruct": instruct}


if __name__ == "__main__":
    if sys.argv[1:] == ["--prepare-only"]:
        prepare()  # what `make sweep` needs before its trials
    else:
        main()
