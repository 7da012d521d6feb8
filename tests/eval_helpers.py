"""Tiny models and benchmark files for the evaluation tests, built by the tests themselves."""

from __future__ import annotations

from pathlib import Path

from helpers import save_llama, tiny_mllm


def probe_tokenizer(folder: Path):
    from eelight.data.probe import corpus_words
    from eelight.data.tokenizer import build_word_tokenizer, load_tokenizer

    if not (folder / "tokenizer_config.json").exists():
        build_word_tokenizer(corpus_words(), folder)
    return load_tokenizer(folder)


def tiny_export_parts(root: Path, preset: str, seed: int = 0):
    """(model, tokenizer, processor): a preset over a tiny random Llama whose vocabulary is the
    probe tokenizer's."""
    from eelight.models.vision import image_processor

    tok = probe_tokenizer(root / "tokenizer")
    llama = root / f"llama{seed}"
    if not (llama / "config.json").exists():
        save_llama(llama, seed=seed, vocab_size=len(tok))
    model = tiny_mllm(preset, llama)
    return model, tok, image_processor(model.cfg.vision, model.vision.image_size)


def save_tiny_export(folder: Path, preset: str) -> Path:
    """An export folder (what `eelight export` writes) of a tiny random model."""
    from eelight.export import save_export

    model, tok, processor = tiny_export_parts(folder.parent, preset)
    return save_export(model, folder, tok, processor, {"template": "probe", "image_placement": "marker"})


def probe_benchmark_files(root: Path, n_images: int = 6) -> Path:
    """A small probe's held-out splits (n_images scenes a family) in the four benchmarks' formats,
    under root/benchmarks."""
    from eelight.data.probe import build_probe, eval_shards
    from eelight.eval.probe_files import write_probe_benchmarks

    if not (root / "benchmarks" / "docvqa" / "val_v1.0.json").exists():
        build_probe(str(root / "probe"), n_train=4, n_eval=n_images, seed=3, shard_size=100)
        write_probe_benchmarks(eval_shards(str(root / "probe")), root / "benchmarks", n_images)
    return root / "benchmarks"
