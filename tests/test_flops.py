"""The saving is realised, not masked: FLOPs counted at Vicuna-7B layer shapes on the meta device."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from eelight.models import LLMConfig, model_config
from eelight.models.decoder import Decoder, Rows

D, F, HEADS, NV, NT = 4096, 11008, 32, 576, 64
VICUNA_7B = LLMConfig(vocab_size=32000, hidden_size=D, intermediate_size=F, num_layers=2,
                      num_heads=HEADS, num_kv_heads=HEADS, max_positions=4096)


def layer_flops(preset: str) -> int:
    cfg = model_config(preset, llm=VICUNA_7B)
    with torch.device("meta"):  # no 7B-sized tensor is ever allocated
        decoder = Decoder(VICUNA_7B, cfg)
    n = NV + NT
    h = torch.empty(1, n, D, device="meta")
    cos, sin = decoder.rotary(torch.arange(n, device="meta")[None], h.dtype)
    rows = Rows(NV, cos, sin)
    decoder.layers[0](h, rows)  # warm-up: builds the cached causal_lower_right bias
    with FlopCounterMode(display=False) as counter:
        for layer in decoder.layers:
            h, _ = layer(h, rows)
    assert h.device.type == "meta"
    return counter.get_total_flops()


def analytic(visual_ffn: bool) -> float:
    """docs/DESIGN.md §1 multiply-adds per layer, EE / LLaVA."""
    n = NV + NT
    llava = n * (4 * D * D + 3 * D * F) + 2 * n * n * D
    ee = NV * 3 * D * D + NT * (4 * D * D + 3 * D * F) + 2 * NT * n * D
    return (ee + (NV * 3 * D * F if visual_ffn else 0)) / llava


@pytest.mark.parametrize("preset,visual_ffn", [("ee_mllm", False), ("ee_mllm_f", True)])
def test_ee_flops_ratio_matches_analytic(preset, visual_ffn):
    ratio = layer_flops(preset) / layer_flops("llava")
    expected = analytic(visual_ffn)
    assert abs(ratio / expected - 1) < 0.03, (ratio, expected)
    assert expected == pytest.approx(0.318 if not visual_ffn else 0.905, abs=0.005)


# The successors (docs/DESIGN.md §8) over 4 layers, multiply-adds per layer from their rules:
# a row's projections cost D² each (q, k, v, o: 32 heads = 32 kv heads), its FFN 3DF, and a
# query over Lk keys 2·Lk·D (scores and values; SDPA computes the full rectangle).
DV, LAYERS = 1024, 4  # SAISA reads CLIP-L's 1024-wide features
TEXT = NT * (4 * D * D + 3 * D * F)


def _llava_layer(nv: int) -> float:
    n = nv + NT
    return n * (4 * D * D + 3 * D * F) + 2 * n * n * D


def _kv_only_layer(extra_per_visual: float = 0) -> float:  # visual rows give K, V only
    return NV * (2 * D * D + extra_per_visual) + TEXT + 2 * NT * (NV + NT) * D


def _text_only_layer() -> float:
    return TEXT + 2 * NT * NT * D


SUCCESSORS = {  # name: (preset, overrides, analytic multiply-adds of the 4 layers)
    "vica": ("vica", {}, 2 * _kv_only_layer() + 2 * _text_only_layer()),  # 4 layers: S = {0, 1}
    "shortv": ("llava", {"kv_only_layers": "1,2"}, 2 * _llava_layer(NV) + 2 * _kv_only_layer()),
    "saisa": ("saisa", {}, 4 * _kv_only_layer(DV * D + D * D)),
    "fastv": ("fastv", {}, 2 * _llava_layer(NV) + 2 * _llava_layer(NV // 2)),
    "fastv_r75": ("fastv_r75", {}, 2 * _llava_layer(NV) + 2 * _llava_layer(NV // 4)),
}


def decoder_flops(preset: str, **kw) -> int:
    llm = VICUNA_7B.__class__(**{**VICUNA_7B.__dict__, "num_layers": LAYERS})
    cfg = model_config(preset, llm=llm, **kw)
    with torch.device("meta"):
        decoder = Decoder(llm, cfg, DV)
        h = torch.empty(1, NV + NT, D)
        features = torch.empty(1, NV, DV)
        positions = torch.arange(NV + NT)[None]
    decoder.run_layers(h, NV, positions, features=features)  # warm-up: builds the cached causal bias
    with FlopCounterMode(display=False) as counter:
        decoder.run_layers(h, NV, positions, features=features)
    return counter.get_total_flops()


@pytest.mark.parametrize("name", sorted(SUCCESSORS))
def test_successor_flops_match_their_analytic_formula(name):
    preset, kw, expected = SUCCESSORS[name]
    ratio = decoder_flops(preset, **kw) / decoder_flops("llava")
    assert ratio == pytest.approx(expected / (LAYERS * _llava_layer(NV)), rel=0.01)
