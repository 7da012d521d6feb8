"""The training-free successors (FastV, ShortV's frozen layers, EE-MLLM-F) through `eelight eval`
on a LLaVA checkpoint: they change what the same weights answer, a preset equals its fields
written out, and FastV's per-sample ranking answers the same at batch 1 and batch 8."""

import json
from pathlib import Path

import pytest
from eval_helpers import probe_benchmark_files, save_tiny_export, tiny_export_parts

from eelight.data.probe import eval_shards
from eelight.eval.mmbench import MMBench
from eelight.eval.probe import Probe
from eelight.eval.runner import generate_answers, likelihood_answers
from eelight.eval.seed import SeedBench

# The tiny LLM has 2 layers: FastV prunes after layer 0 (K = 1), ShortV freezes layer 0 (the last
# layer's visual rows feed nothing: freezing them changes no text logit).
VARIANTS = {
    "llava": [],
    "fastv": ["model_preset=fastv", "model.prune_after=1"],
    "fastv_fields": ["model.prune_after=1", "model.prune_ratio=0.5"],
    "fastv_r75": ["model_preset=fastv_r75", "model.prune_after=1"],
    "shortv": ["model.kv_only_layers=0"],
    "ee_mllm_f": ["model_preset=ee_mllm_f"],
    "llava_flex": ["model.attn_impl=flex"],  # the FlexAttention backend: the same scores
}


def test_training_free_successors_through_eelight_eval(tmp_path):
    from eelight.evaluate.command import main

    folder = save_tiny_export(tmp_path / "llava_export", "llava")
    files = probe_benchmark_files(tmp_path)
    args = ["benchmarks=[seed]", f"eval.data_root={files}", "eval.limit=8"]
    scores = {}
    for name, extra in VARIANTS.items():
        result = main(str(folder), args + extra, out=str(tmp_path / name), log=False)
        assert "seed/accuracy" in result["metrics"]
        lines = (tmp_path / name / "seed" / "predictions.jsonl").read_text().splitlines()
        scores[name] = [json.loads(line)["choice_loglik"] for line in lines]
    for name in ("fastv", "fastv_r75", "shortv", "ee_mllm_f"):
        assert scores[name] != scores["llava"], name  # the variant changes what the weights compute
    assert scores["fastv"] != scores["fastv_r75"]
    assert scores["fastv"] == scores["fastv_fields"]  # the preset is exactly its fields
    for flex, sdpa in zip(scores["llava_flex"], scores["llava"], strict=True):  # the FlexAttention backend
        assert flex == pytest.approx(sdpa, rel=1e-5, abs=1e-5)


def test_fastv_answers_do_not_depend_on_batch_size(tmp_path):
    from eelight.data.image import FastImageTransform
    from eelight.data.text import template
    from eelight.eval.runner import Asker
    from eelight.models.folder import load_model

    folder = save_tiny_export(tmp_path / "llava_export", "llava")
    _, tok, processor = tiny_export_parts(tmp_path, "llava")
    model = load_model(folder, ["model_preset=fastv", "prune_after=1"])
    files = probe_benchmark_files(tmp_path)
    items = Probe(eval_shards(str(tmp_path / "probe")), limit=2).load() + \
        MMBench(str(files / "mmbench" / "MMBench_DEV_EN.tsv"), limit=2).load()

    def asker(batch_size):
        return Asker(model.eval(), tok, FastImageTransform(processor), template("probe"), "marker", batch_size,
                     max_new_tokens=6)

    assert generate_answers(asker(1), items, "mix") == generate_answers(asker(8), items, "mix")
    seed = SeedBench(str(files / "seed" / "SEED-Bench.json"), str(files / "seed" / "images"), limit=5).load()
    assert likelihood_answers(asker(1), seed, "seed")[0] == likelihood_answers(asker(8), seed, "seed")[0]



@pytest.mark.slow
def test_shortv_calibration_scores_each_frozen_layer_and_eval_uses_its_choice(probe_env, tmp_path):
    """`eelight shortv RUN` scores layer l by KL(p_orig || p_frozen) of the last token; here the
    reference builds the run with model.kv_only_layers=l instead of swapping the rule in place."""
    import torch
    import torch.nn.functional as F

    from eelight.cli import main as cli
    from eelight.data.loader import make_pipeline
    from eelight.evaluate.target import load_target
    from eelight.training.config import load_run_config
    from eelight.training.run import train

    cfg = load_run_config(["experiments/ee_mllm_tiny.yaml"], probe_env["overrides"] + [
        "model_preset=llava", "name=shortv_llava", "stage=instruct", "trainer.max_steps=4", "eval.limit=4"])
    run = Path(train(cfg)["checkpoint"]).parent
    cli(["shortv", str(run), "--samples", "6"])
    record = json.loads((run / "shortv.json").read_text())
    n_layers = len(record["scores"])
    assert record["samples"] == 6 and record["freeze"] == 1 and n_layers == 2

    def last_logp(target):
        data = target.run_cfg.data
        batches = make_pipeline(data.train_shards, stage="instruct", tokenizer=target.tokenizer,
                                processor=target.processor, template_name=data.template, batch_size=1,
                                max_length=data.max_length, max_batches=6, split_by_node=False)
        with torch.no_grad():
            return [F.log_softmax(target.model(b["input_ids"], b["pixel_values"], image_offset=b["image_offset"]
                                               ).logits[:, -1].float(), -1) for b in batches]

    orig = last_logp(load_target(str(run), []))
    for layer in range(n_layers):
        frozen = last_logp(load_target(str(run), [f"model.kv_only_layers={layer}"]))
        kl = sum(float((o.exp() * (o - f)).sum()) for o, f in zip(orig, frozen, strict=True)) / len(orig)
        assert record["scores"][layer] == pytest.approx(kl, rel=1e-4, abs=1e-7)
    chosen = min(range(n_layers), key=lambda i: record["scores"][i])
    assert record["layers"] == [chosen]
    target = load_target(str(run), ["model_preset=shortv"])
    assert [layer.rule.visual_queries for layer in target.model.decoder.layers] == [i != chosen for i in range(2)]


def test_shortv_without_a_calibration_says_what_to_run(tmp_path, capsys):
    from helpers import one_line_exit_2

    folder = save_tiny_export(tmp_path / "llava_export", "llava")
    line = one_line_exit_2(capsys, ["eval", str(folder), "model_preset=shortv", "--no-mlflow"])
    assert "eelight shortv" in line


def test_fastv_is_refused_for_training_in_one_line(capsys):
    from helpers import one_line_exit_2

    line = one_line_exit_2(capsys, ["train", "experiments/ee_mllm_tiny.yaml", "model_preset=fastv"])
    assert "evaluation only" in line and "model_preset=fastv" in line
