"""The optional FlexAttention backend (`model.attn_impl=flex`, models/flex.py): for every variant
the same logits and answers as the SDPA path (itself held to the float64 per-token references of
test_composite_attention.py and test_successors.py), with left padding, `<image>` mid-text and
the KV cache; training with it on CPU, where torch's FlexAttention has no backward, is refused in
one line."""

from __future__ import annotations

import pytest
import torch

from eelight.models.config import LLMConfig, VisionConfig, model_config
from eelight.models.mllm import build_mllm

PRESETS = ["ee_mllm", "ee_mllm_fresh", "llava", "flamingo", "vica", "saisa", "shortv", "fastv", "aki", "ee_mllm_f"]
VARIANTS = {"shortv": ("llava", {"kv_only_layers": "1"}), "fastv": ("fastv", {"prune_after": 1})}
LLM = LLMConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                max_positions=128)
VISION = VisionConfig(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=1)


def _pair(preset: str):
    """The same weights with attn_impl=sdpa and attn_impl=flex."""
    preset, extra = VARIANTS.get(preset, (preset, {}))
    torch.manual_seed(0)
    sdpa = build_mllm(model_config(preset, llm=LLM, vision=VISION, attn_impl="sdpa", **extra)).eval()
    flex = build_mllm(model_config(preset, llm=LLM, vision=VISION, attn_impl="flex", **extra)).eval()
    flex.load_state_dict(sdpa.state_dict())
    return sdpa, flex


def _padded_batch(lengths: list[int], width: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = torch.randint(3, LLM.vocab_size, (n,), generator=g)
        mask[i, width - n:] = 1  # left padding
    pixels = torch.randint(0, 256, (len(lengths), 3, 16, 16), dtype=torch.uint8, generator=g)
    return ids, mask, pixels


@pytest.mark.parametrize("preset", PRESETS)
def test_flex_logits_equal_sdpa_with_padding_and_the_image_mid_text(preset):
    sdpa, flex = _pair(preset)
    ids, mask, pixels = _padded_batch([9, 6, 9], 9)
    offset = torch.tensor([0, 3, 4])  # image first; after 3 and 4 text tokens
    kw = dict(attention_mask=mask, image_offset=offset, question_end=torch.tensor([6, 4, 8]))
    with torch.no_grad():
        want, got = sdpa(ids, pixels, **kw).logits, flex(ids, pixels, **kw).logits
    valid = mask.bool()  # padding rows are read by no loss and no answer
    torch.testing.assert_close(got[valid], want[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", PRESETS)
def test_flex_generation_equals_sdpa_cached_and_padded(preset):
    sdpa, flex = _pair(preset)
    ids, mask, pixels = _padded_batch([7, 4, 6], 7)
    kw = dict(attention_mask=mask, max_new_tokens=5, question_end=torch.tensor([6, 3, 5]))
    want = sdpa.generate(ids, pixels, **kw)
    assert torch.equal(flex.generate(ids, pixels, **kw), want)
    assert torch.equal(flex.generate(ids, pixels, use_cache=False, **kw), want)


def test_the_block_mask_skips_the_blocks_a_dense_mask_hides():
    from eelight.models.flex import block_mask

    dense = torch.zeros(1, 1, 256, 256, dtype=torch.bool)
    dense[..., :128, :128] = True  # one block of four visible
    blocks = block_mask(dense, 256, 256, torch.device("cpu"))
    assert blocks.sparsity() == pytest.approx(75.0)
    causal = block_mask(None, 256, 384, torch.device("cpu"))  # bottom-right: every query sees the first 128 keys
    assert causal.to_dense()[0, 0].tolist() == [[1, 1, 0], [1, 1, 1]]


def test_flex_refuses_a_backward_on_cpu_in_one_line():
    from eelight.models.flex import flex_attend

    q = torch.randn(1, 4, 2, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="no backward on CPU") as error:
        flex_attend(q, q.detach(), q.detach(), None)
    assert "\n" not in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="flex trains on CUDA")
def test_training_with_flex_on_cpu_is_refused_in_one_line(capsys):
    from helpers import one_line_exit_2

    line = one_line_exit_2(capsys, ["train", "experiments/ee_mllm_tiny.yaml", "model.attn_impl=flex"])
    assert "model.attn_impl=flex" in line and "model.attn_impl=auto" in line


@pytest.mark.parametrize("preset", ["ee_mllm", "aki", "fastv", "flamingo"])
def test_flex_traces_with_no_graph_break_in_the_padded_cached_prefill(preset):
    from test_compile import _breaks, _decoder_call

    from eelight.models.kv_cache import KVCache

    _, model = _pair(preset)
    ids, mask, pixels = _padded_batch([9, 6], 9)
    with torch.no_grad():
        features = model.vision_features(pixels)
        visual = model.projector(features)
        args, kwargs = _decoder_call(model, lambda: model._run(ids, visual, mask.bool(), KVCache(LLM.num_layers),
                                                               features=features, question_end=torch.tensor([6, 4])))
        args = tuple(KVCache(LLM.num_layers) if isinstance(a, KVCache) else a for a in args)
        assert _breaks(model, args, kwargs) == 0
