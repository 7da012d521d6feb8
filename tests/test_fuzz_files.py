"""Every file a user hands eelight, broken at random (issue 28, must-show 2): random bytes, a
truncated copy and bit-flipped copies of a good file go through the entry point the CLI uses for
that kind. Each ends in a `UserError` whose one line names the file, or loads (a flip inside
tensor data or a string can leave a valid file), or, for data samples, is skipped and counted:
never another exception. 200 examples per kind here (`--hypothesis-profile=long`: 2,000)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eelight.errors import UserError


def _settings() -> settings:
    """The loaded profile's example count (conftest: 200; long: 2,000), no deadline."""
    return settings(settings.default, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def broken(draw, good: bytes) -> bytes:
    """Random bytes, a truncated copy, or a copy with 1-8 flipped bits, of `good`."""
    kind = draw(st.sampled_from(["random", "truncated", "flipped"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    if kind == "truncated":
        return good[: draw(st.integers(0, max(len(good) - 1, 0)))]
    data = bytearray(good)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


def _ends_well(call, path: Path, names: tuple[str, ...] = ()) -> None:
    """`call()` returns, or raises a one-line UserError naming `path` (or one of `names`)."""
    try:
        call()
    except UserError as exn:
        message = str(exn)
        assert "\n" not in message.strip() or "Original Traceback" in message, message
        assert any(n in message for n in (str(path), path.name, *names)), message


def _fuzz(good_path: Path, call, names: tuple[str, ...] = ()):
    """A Hypothesis test body: write a broken copy over `good_path`, call, restore."""
    good = good_path.read_bytes()

    @_settings()
    @given(broken(good))
    def run(data: bytes) -> None:
        good_path.write_bytes(data)
        try:
            _ends_well(call, good_path, names)
        finally:
            good_path.write_bytes(good)

    run()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model's checkpoint, HF LLM folder, tokenizer, probe shards and benchmark files."""
    import torch
    from helpers import save_llama

    from eelight.data.probe import build_probe
    from eelight.eval.probe_files import write_probe_benchmarks
    from eelight.models.config import ModelConfig
    from eelight.models.mllm import build_mllm

    root = tmp_path_factory.mktemp("fuzz")
    model = build_mllm(ModelConfig())
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "global_step": 3},
               root / "stage.ckpt")
    save_llama(root / "llm", vocab_size=128)
    build_probe(str(root / "probe"), n_train=24, n_eval=6, seed=0, shard_size=12,
                families=["attribute", "reading", "document"])
    write_probe_benchmarks(f"{root}/probe/eval-{{attribute,reading,document}}-000000.tar", root / "bench", n_images=18)
    return {"root": root, "model": model}


def test_a_checkpoint(tiny):
    from eelight.models.config import ModelConfig
    from eelight.models.mllm import build_mllm
    from eelight.training.checkpoint import init_from_checkpoint

    model = build_mllm(ModelConfig())
    _fuzz(tiny["root"] / "stage.ckpt", lambda: init_from_checkpoint(model, tiny["root"] / "stage.ckpt"))


def _hf_model(folder: Path):
    from eelight.models.config import LLMConfig, ModelConfig
    from eelight.models.hf_loading import resolve_model
    from eelight.models.mllm import build_mllm

    def call():
        build_mllm(resolve_model(ModelConfig(llm=LLMConfig(path=str(folder)))))

    return call


def test_an_hf_config_json(tiny):
    folder = tiny["root"] / "llm"
    _fuzz(folder / "config.json", _hf_model(folder), names=(str(folder),))  # sizes that miss the weights


def test_hf_safetensors(tiny):
    folder = tiny["root"] / "llm"
    _fuzz(folder / "model.safetensors", _hf_model(folder), names=(str(folder),))  # a key error names the folder


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_tokenizer_files(tiny, name):
    from eelight.data.tokenizer import load_tokenizer

    folder = tiny["root"] / "probe" / "tokenizer"
    _fuzz(folder / name, lambda: load_tokenizer(folder), names=(str(folder),))


def _read_shards(tiny, subset: int | None = None):
    from eelight.data.loader import BadSampleCounter, make_pipeline
    from eelight.data.tokenizer import load_tokenizer
    from eelight.models.config import VisionConfig
    from eelight.models.vision import image_processor

    tok = load_tokenizer(tiny["root"] / "probe" / "tokenizer")
    proc = image_processor(VisionConfig(), 32)
    urls = f"{tiny['root']}/probe/train-{{000000..000001}}.tar"

    def call():
        counter = BadSampleCounter()
        pipeline = make_pipeline(urls, stage="instruct", tokenizer=tok, processor=proc, batch_size=8,
                                 subset=subset, counter=counter)
        for _ in pipeline:
            pass

    return call


def test_a_shard(tiny):
    """A broken shard: its samples are skipped and counted, or the run stops in one line (all bad)."""
    _fuzz(tiny["root"] / "probe" / "train-000000.tar", _read_shards(tiny), names=("train-000000.tar",))


def test_a_shard_index(tiny):
    _fuzz(tiny["root"] / "probe" / "index.json", _read_shards(tiny, subset=6), names=("index.json",))


@pytest.mark.parametrize("name, file", [("mmbench", "mmbench/MMBench_DEV_EN.tsv"), ("seed", "seed/SEED-Bench.json"),
                                        ("textvqa", "textvqa/TextVQA_0.5.1_val.json"),
                                        ("docvqa", "docvqa/val_v1.0.json")])
def test_a_benchmark_file(tiny, name, file):
    from eelight.eval.config import EvalConfig
    from eelight.eval.registry import make_evaluator

    evaluator = make_evaluator(name, EvalConfig(data_root=str(tiny["root"] / "bench")))
    _fuzz(tiny["root"] / "bench" / file, evaluator.load)


def test_a_run_yaml(tmp_path):
    from eelight.training.config import load_run_config

    path = tmp_path / "run.yaml"
    shutil.copy("experiments/ee_mllm_tiny.yaml", path)
    _fuzz(path, lambda: load_run_config([str(path)], []))


def test_a_sweep_file(tmp_path):
    from eelight.sweeps.config import load_sweep

    path = tmp_path / "sweep.yaml"
    shutil.copy("sweeps/weight_reuse.yaml", path)
    _fuzz(path, lambda: load_sweep(str(path)))


@pytest.mark.parametrize("kind", ["checkpoint", "run yaml", "config.json"])
def test_a_few_cases_through_the_real_cli(tiny, tmp_path, kind, capsys):
    """Random bytes through `eelight train`: exit 2, one line, naming the file."""
    from eelight.cli import main

    junk = bytes(range(256)) * 3
    root = tiny["root"]
    argv = ["train", "experiments/ee_mllm_tiny.yaml", f"out_dir={tmp_path}", "name=fuzz", "data.val_shards=null",
            f"data.train_shards={root}/probe/train-{{000000..000001}}.tar", f"data.tokenizer={root}/probe/tokenizer",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "model.llm.path=null", "model.vision.path=null"]
    if kind == "checkpoint":
        (tmp_path / "x.ckpt").write_bytes(junk)
        argv += ["stage=instruct", f"init_from={tmp_path / 'x.ckpt'}"]
        named = "x.ckpt"
    elif kind == "run yaml":
        (tmp_path / "run.yaml").write_bytes(junk)
        argv[1] = str(tmp_path / "run.yaml")
        named = "run.yaml"
    else:
        folder = tmp_path / "llm"
        shutil.copytree(tiny["root"] / "llm", folder)
        (folder / "config.json").write_bytes(junk)
        argv += [f"model.llm.path={folder}"]
        named = "config.json"
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and named in err, err
