"""Tiny genuine Hugging Face checkpoints, built and saved by the tests themselves."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import torch

TINY_LLM = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
TINY_CLIP = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
)


def save_llama(folder: Path, seed: int = 0, **overrides) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**{**TINY_LLM, **overrides})
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def save_qwen2(folder: Path, seed: int = 0) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**TINY_LLM, tie_word_embeddings=True, rope_theta=1e6))
    with torch.no_grad():  # HF initialises biases to 0: make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    model.save_pretrained(folder)
    return folder


def save_mistral(folder: Path, seed: int = 0) -> Path:
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    MistralForCausalLM(MistralConfig(**TINY_LLM)).save_pretrained(folder)
    return folder


def save_llava(folder: Path, seed: int = 0) -> Path:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**TINY_CLIP),
        text_config=LlamaConfig(**TINY_LLM),
        image_token_index=TINY_LLM["vocab_size"] - 1,
        image_seq_length=16,
    )
    LlavaForConditionalGeneration(cfg).save_pretrained(folder)
    return folder


def hf_llava(folder: Path):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(folder).eval()


def hf_causal_lm(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


def composite_mask(nv: int, nt: int, b: int) -> torch.Tensor:
    """EE-MLLM's attention as an HF additive 4-D mask (docs/DESIGN.md §1): visual rows see only
    themselves; text rows see every visual row and the text up to themselves."""
    n = nv + nt
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:nv, :nv] = torch.eye(nv, dtype=torch.bool)
    allowed[nv:, :nv] = True
    allowed[nv:, nv:] = torch.ones(nt, nt).tril().bool()
    return torch.zeros(n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None].expand(b, 1, n, n)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def tiny_mllm(preset: str, llama_dir: Path):
    """A preset over the tiny HF Llama, in eval mode, with Flamingo's gates opened (0.7) so
    its cross-attention matters (they start at 0: the text-only LLM)."""
    from eelight.models import LLMConfig, build_mllm, model_config

    model = build_mllm(model_config(preset, llm=LLMConfig(path=str(llama_dir)))).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_gate"):
                p.fill_(0.7)
    return model


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A tar of (member name, bytes), in the order given (hand-made shards for loader tests)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def one_line_exit_2(capsys, argv: list[str]) -> str:
    """`eelight ARGV` in this process: exit status 2 and one line on stderr, no traceback."""
    import pytest

    from eelight.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def save_dinov2(folder: Path, registers: int = 0, size: int = 32, patch: int = 8, crop: int | None = None,
                seed: int = 0) -> Path:
    """A tiny random HF DINOv2 (`Dinov2Model`, or `Dinov2WithRegistersModel` with registers) and,
    with `crop`, the facebook/dinov2 processor's settings scaled to it (resize to 256/224 of the
    crop, centre crop, ImageNet mean and std) as its preprocessor_config.json."""
    from transformers import (
        BitImageProcessorPil,
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    torch.manual_seed(seed)
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=size,
                 patch_size=patch, layerscale_value=0.5)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**sizes, num_register_tokens=registers))
    else:
        model = Dinov2Model(Dinov2Config(**sizes))
    with torch.no_grad():  # HF zero-initialises these; random values make a wrong token order visible
        for name, p in model.named_parameters():
            if "token" in name or "position" in name:
                p.normal_()
    model.save_pretrained(folder)
    if crop:
        BitImageProcessorPil(size={"shortest_edge": round(crop * 256 / 224)}, crop_size={"height": crop, "width": crop},
                             image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD).save_pretrained(folder)
    return folder


def save_siglip(folder: Path, size: int = 32, patch: int = 8, seed: int = 1) -> Path:
    """A tiny random HF SigLIP vision tower with its processor (resize to size x size)."""
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(**{**TINY_CLIP, "image_size": size, "patch_size": patch, "hidden_size": 48,
                                "num_attention_heads": 3})
    SiglipVisionModel(cfg).save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": size, "width": size}).save_pretrained(folder)
    return folder
