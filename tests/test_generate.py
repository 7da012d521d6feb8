"""KV-cached generation equals greedy decoding without a cache; padding is masked."""

import pytest
import torch
from helpers import tiny_mllm

PRESETS = ["ee_mllm", "llava", "flamingo", "ee_mllm_fresh", "ee_mllm_no_aligner"]


@pytest.mark.parametrize("preset", PRESETS)
def test_cached_generate_equals_uncached(preset, llama_dir):
    model = tiny_mllm(preset, llama_dir)
    ids, pixels = torch.randint(0, 96, (3, 6)), torch.randn(3, 3, 32, 32)
    cached = model.generate(ids, pixels, max_new_tokens=12)
    uncached = model.generate(ids, pixels, max_new_tokens=12, use_cache=False)
    assert cached.shape == (3, 12)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("preset", ["ee_mllm", "llava", "flamingo"])
def test_left_padded_batch_equals_each_sample_alone(preset, llama_dir):
    model = tiny_mllm(preset, llama_dir)
    pixels = torch.randn(2, 3, 32, 32)
    short, long = torch.randint(0, 90, (1, 3)), torch.randint(0, 90, (1, 7))
    pad = torch.full((1, 4), 95)
    batch = torch.cat([torch.cat([pad, short], 1), long])
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    together = model.generate(batch, pixels, attention_mask=mask, max_new_tokens=8)
    alone = [model.generate(x, pixels[i:i + 1], max_new_tokens=8) for i, x in enumerate([short, long])]
    assert torch.equal(together, torch.cat(alone))
    assert torch.equal(together, model.generate(batch, pixels, attention_mask=mask, max_new_tokens=8,
                                                use_cache=False))


def test_generate_stops_at_eos(llama_dir):
    model = tiny_mllm("ee_mllm", llama_dir)
    ids, pixels = torch.randint(0, 96, (1, 5)), torch.randn(1, 3, 32, 32)
    first = model.generate(ids, pixels, max_new_tokens=1)[0, 0].item()
    out = model.generate(ids, pixels, max_new_tokens=10, eos_token_id=first)
    assert out.tolist() == [[first]]
