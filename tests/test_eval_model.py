"""Asking models: batch-size invariance with padding, the SEED protocols on a model trained to
prefer an answer, EE-MLLM-F on a LLaVA checkpoint, and `eelight eval` on a run folder with
its MLflow record."""

import json

import pytest
import torch
from eval_helpers import probe_benchmark_files, save_tiny_export, tiny_export_parts

from eelight.data.image import FastImageTransform
from eelight.data.probe import eval_shards
from eelight.data.text import encode, template
from eelight.eval.mmbench import MMBench
from eelight.eval.probe import Probe
from eelight.eval.runner import Asker, generate_answers, likelihood_answers, run_benchmark
from eelight.eval.seed import SeedBench


def _asker(model, tok, processor, batch_size):
    return Asker(model.eval(), tok, FastImageTransform(processor), template("probe"), "marker", batch_size,
                 max_new_tokens=6)


@pytest.mark.parametrize("preset", ["ee_mllm", "llava", "flamingo"])
def test_answers_do_not_depend_on_batch_size(tmp_path, preset):
    model, tok, processor = tiny_export_parts(tmp_path, preset)
    files = probe_benchmark_files(tmp_path)
    # mixed prompt lengths in one batch: short probe questions and long multiple-choice ones
    items = Probe(eval_shards(str(tmp_path / "probe")), limit=2).load() + \
        MMBench(str(files / "mmbench" / "MMBench_DEV_EN.tsv"), limit=2).load()
    one = generate_answers(_asker(model, tok, processor, 1), items, "mix")
    eight = generate_answers(_asker(model, tok, processor, 8), items, "mix")
    assert one == eight
    assert len(set(one)) > 1  # the random model does say different things
    seed = SeedBench(str(files / "seed" / "SEED-Bench.json"), str(files / "seed" / "images"), limit=5).load()
    best1, scores1 = likelihood_answers(_asker(model, tok, processor, 1), seed, "seed")
    best8, scores8 = likelihood_answers(_asker(model, tok, processor, 8), seed, "seed")
    assert best1 == best8
    for s1, s8 in zip(scores1, scores8, strict=True):
        assert s1 == pytest.approx(s8, abs=1e-5)


def _seed_files(tmp_path):
    """Two SEED questions about two images; the model will be taught blue (C) and circle (A)."""
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 32), (30, 60, 220)).save(tmp_path / "img" / "blue.png")
    Image.new("RGB", (32, 32), (230, 200, 20)).save(tmp_path / "img" / "yellow.png")
    colours = {"choice_a": "red", "choice_b": "green", "choice_c": "blue", "choice_d": "yellow"}
    shapes = {"choice_a": "circle", "choice_b": "square", "choice_c": "triangle", "choice_d": "cross"}
    questions = [
        {"question_id": "q1", "question_type_id": 3, "data_id": "blue.png", "question": "what colour are the shapes ?",
         "answer": "C", **colours},
        {"question_id": "q2", "question_type_id": 1, "data_id": "yellow.png", "question": "what shape is in the image ?",
         "answer": "A", **shapes},
    ]
    (tmp_path / "seed.json").write_text(json.dumps({"questions": questions}))
    return str(tmp_path / "seed.json"), str(tmp_path / "img"), questions


def test_seed_likelihood_picks_what_the_model_was_taught_and_generation_agrees(tmp_path):
    from PIL import Image

    from eelight.data.prompts import LETTERS, multiple_choice

    model, tok, processor = tiny_export_parts(tmp_path, "ee_mllm")
    file, images, questions = _seed_files(tmp_path)
    transform = FastImageTransform(processor)
    batch = []
    for q in questions:  # both formats: the answer's words after the question, its letter after the options
        choices = {k: q[f"choice_{k.lower()}"] for k in LETTERS}
        pixels = transform(Image.open(f"{images}/{q['data_id']}").convert("RGB"))
        for question, answer in [(q["question"], choices[q["answer"]]),
                                 (multiple_choice(q["question"], choices), q["answer"])]:
            turns = [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}]
            batch.append((encode(turns, template("probe"), tok, 128), pixels))
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        for enc, pixels in batch:
            out = model(torch.tensor([enc.ids]), pixels[None], labels=torch.tensor([enc.labels]),
                        image_offset=enc.image_offset)
            optimiser.zero_grad()
            out.loss.backward()
            optimiser.step()
    asker = _asker(model, tok, processor, 4)
    likelihood = run_benchmark(asker, SeedBench(file, images, protocol="likelihood"))
    generation = run_benchmark(asker, SeedBench(file, images, protocol="generation"))
    assert [r["parsed"] for r in likelihood.records] == ["C", "A"]
    assert [r["parsed"] for r in generation.records] == ["C", "A"]
    assert likelihood.metrics["seed/accuracy"] == generation.metrics["seed/accuracy"] == 1.0
    taught = likelihood.records[0]["choice_loglik"]
    assert max(taught, key=taught.get) == "C" and taught["C"] > taught["A"] + 1.0


def test_ee_mllm_f_on_a_llava_checkpoint_runs_and_differs(tmp_path):
    from eelight.evaluate.command import main
    from eelight.evaluate.target import load_target

    folder = save_tiny_export(tmp_path / "llava_export", "llava")
    files = probe_benchmark_files(tmp_path)
    args = ["benchmarks=[seed]", f"eval.data_root={files}", "eval.limit=8"]
    llava = main(str(folder), args, out=str(tmp_path / "a"), log=False)
    ee_f = main(str(folder), args + ["model.visual_attn=none"], out=str(tmp_path / "b"), log=False)
    preset = main(str(folder), args + ["model_preset=ee_mllm_f"], out=str(tmp_path / "c"), log=False)
    target = load_target(str(folder), ["model_preset=ee_mllm_f"])
    assert (target.model.cfg.visual_attn, target.model.cfg.aligner_ffn) == ("none", True)

    def logliks(out):
        lines = (tmp_path / out / "seed" / "predictions.jsonl").read_text().splitlines()
        return [json.loads(line)["choice_loglik"] for line in lines]

    assert logliks("a") != logliks("b")  # composite attention changes what the same weights compute
    assert logliks("b") == logliks("c")  # model.visual_attn=none on LLaVA weights is the ee_mllm_f preset
    assert set(llava["metrics"]) == set(ee_f["metrics"]) == set(preset["metrics"])
    rows = json.loads((tmp_path / "b" / "seed" / "seed_rows.json").read_text())
    assert len(rows) == 8 and {"question_id", "choice_a", "answer", "prediction"} <= set(rows[0])


@pytest.mark.slow
def test_eval_of_a_run_folder_logs_to_its_mlflow_run(probe_env, tmp_path):
    import mlflow

    from eelight.evaluate.command import main
    from eelight.training.config import load_run_config
    from eelight.training.run import train

    cfg = load_run_config(["experiments/llava_tiny.yaml"], probe_env["overrides"] + [
        "name=eval_llava", "stage=instruct", "trainer.max_steps=20", "data.val_samples=8"])
    result = train(cfg)
    assert "probe/accuracy" in result["metrics"] and "probe/accuracy/attribute" in result["metrics"]
    files = probe_benchmark_files(tmp_path)
    args = ["benchmarks=[probe,mmbench,textvqa]", f"eval.data_root={files}", "eval.limit=3"]
    out = main(str(cfg.run_dir), args)
    assert out["mlflow_run_id"] == result["mlflow_run_id"]  # the training run's record
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{probe_env['root']}/mlflow.db")
    run = client.get_run(out["mlflow_run_id"])
    for key in ("mmbench/accuracy", "textvqa/accuracy", "probe/accuracy"):
        assert run.data.metrics[key] == pytest.approx(out["metrics"][key])
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "eval/as_trained/mmbench")}
    assert logged == {"eval/as_trained/mmbench/predictions.jsonl", "eval/as_trained/mmbench/mmbench_rows.tsv"}
    records = [json.loads(line) for line in (cfg.run_dir / "eval/as_trained/mmbench/predictions.jsonl").open()]
    assert len(records) == 12 and set(records[0]) >= {"question_id", "prompt", "prediction", "parsed", "score"}
    ee_f = main(str(cfg.run_dir), args + ["model.visual_attn=none"])
    child = client.get_run(ee_f["mlflow_run_id"])
    assert child.data.tags["mlflow.parentRunId"] == result["mlflow_run_id"]
    assert child.data.params["model.visual_attn"] == "none" and child.info.status == "FINISHED"
