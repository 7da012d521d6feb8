"""The saving is realised, not masked: FLOPs counted at Vicuna-7B layer shapes on the meta device."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from eelight.models import LLMConfig, model_config
from eelight.models.decoder import Decoder

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
    decoder.layers[0](h, NV, cos, sin)  # warm-up: builds the cached causal_lower_right bias
    with FlopCounterMode(display=False) as counter:
        for layer in decoder.layers:
            h = layer(h, NV, cos, sin)
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
