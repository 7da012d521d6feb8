"""The visual block where the `<image>` marker stood (image_offset), against references
that lay the sequence out in its true order: HF LLaVA with image tokens mid-text, and
the HF decoder under EE-MLLM's composite mask over [T[:m]; I; T[m:]]."""

import pytest
import torch
from helpers import hf_causal_lm, hf_llava, rel_err, tiny_mllm

from eelight.models import load_llava

PRESETS = ["ee_mllm", "llava", "flamingo", "ee_mllm_fresh", "ee_mllm_no_aligner"]


def test_llava_with_image_mid_text_matches_hf_llava(llava_dir):
    ours = load_llava(str(llava_dir), "llava").eval()
    ref = hf_llava(llava_dir)
    nv, offsets = ours.num_visual_tokens, [0, 4, 9]
    text = torch.randint(0, 90, (3, 9))
    pixels = torch.randn(3, 3, 32, 32)
    # HF LLaVA puts the image features where the image tokens are in input_ids.
    image_tok = torch.full((nv,), ref.config.image_token_index)
    hf_ids = torch.stack([torch.cat([t[:m], image_tok, t[m:]]) for t, m in zip(text, offsets, strict=True)])
    with torch.no_grad():
        hf_logits = ref(input_ids=hf_ids, pixel_values=pixels).logits
        got = ours(text, pixels, image_offset=torch.tensor(offsets)).logits
    expected = torch.stack([hf_logits[i][hf_ids[i] != ref.config.image_token_index] for i in range(3)])
    assert rel_err(got, expected) < 1e-5


def test_ee_mid_text_equals_hf_decoder_under_composite_mask(llama_dir):
    ours, ref = tiny_mllm("ee_mllm_f", llama_dir), hf_causal_lm(llama_dir)
    nv, nt, offsets = 16, 8, [2, 5]
    visual, ids = torch.randn(2, nv, 64), torch.randint(0, 96, (2, nt))
    n = nv + nt
    embeds, masks, text_rows = [], [], []
    for b, m in enumerate(offsets):
        tokens = ref.model.embed_tokens(ids[b])
        embeds.append(torch.cat([tokens[:m], visual[b], tokens[m:]]))
        is_visual = torch.zeros(n, dtype=torch.bool)
        is_visual[m:m + nv] = True
        # docs/DESIGN.md §1 in sequence order: a visual row sees only itself; text sees all before it.
        allowed = torch.ones(n, n).tril().bool() & ~is_visual[:, None]
        allowed |= torch.eye(n, dtype=torch.bool)
        masks.append(torch.zeros(n, n).masked_fill(~allowed, torch.finfo(torch.float32).min))
        text_rows.append(~is_visual)
    with torch.no_grad():
        out = ref(inputs_embeds=torch.stack(embeds), attention_mask=torch.stack(masks)[:, None])
        got = ours(ids, visual_tokens=visual, image_offset=torch.tensor(offsets)).logits
    expected = torch.stack([out.logits[b][text_rows[b]] for b in range(2)])
    assert rel_err(got, expected) < 1e-5


@pytest.mark.parametrize("preset", PRESETS)
def test_text_before_the_image_does_not_see_it(preset, llama_dir):
    model = tiny_mllm(preset, llama_dir)
    ids, m = torch.randint(0, 96, (1, 8)), 3
    with torch.no_grad():
        a = model(ids, torch.randn(1, 3, 32, 32), image_offset=torch.tensor([m])).logits
        b = model(ids, torch.randn(1, 3, 32, 32), image_offset=torch.tensor([m])).logits
        text_only = model(ids[:, :m]).logits
    assert torch.allclose(a[:, :m], b[:, :m], atol=1e-6)  # another image: the same text before it
    assert not torch.allclose(a[:, m:], b[:, m:], atol=1e-4)  # ... and different text after it
    if preset != "flamingo":  # in the decoder the rows before the image are the text-only LLM's
        assert rel_err(a[:, :m], text_only) < 1e-5


@pytest.mark.parametrize("preset", ["ee_mllm", "llava", "flamingo"])
def test_zero_offset_is_the_default_layout(preset, llama_dir):
    model = tiny_mllm(preset, llama_dir)
    ids, pixels = torch.randint(0, 96, (2, 6)), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        default = model(ids, pixels).logits
        assert torch.equal(default, model(ids, pixels, image_offset=torch.zeros(2, dtype=torch.long)).logits)
        assert torch.equal(default, model(ids, pixels, image_offset=0).logits)


def test_flamingo_zeroes_cross_attention_before_the_image(llama_dir):
    block = tiny_mllm("flamingo", llama_dir).decoder.layers[0].cross_attn
    h, visual = torch.randn(1, 5, 64), torch.randn(1, 16, 64)
    rows = torch.tensor([[False, False, True, True, True]])
    with torch.no_grad():
        got = block(h, visual, media_rows=rows)
        full = block(h, visual)
        ffn_only = h + torch.tanh(block.ffn_gate) * block.ffn(block.ffn_norm(h))
    assert torch.allclose(got[:, 2:], full[:, 2:])
    assert torch.allclose(got[:, :2], ffn_only[:, :2])


@pytest.mark.parametrize("preset", PRESETS)
def test_cached_generate_with_offsets_equals_uncached(preset, llama_dir):
    model = tiny_mllm(preset, llama_dir)
    ids, pixels, offsets = torch.randint(0, 96, (3, 6)), torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 6])
    cached = model.generate(ids, pixels, max_new_tokens=10, image_offset=offsets)
    uncached = model.generate(ids, pixels, max_new_tokens=10, use_cache=False, image_offset=offsets)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, model.generate(ids, pixels, max_new_tokens=10))


@pytest.mark.parametrize("preset", ["ee_mllm", "llava", "flamingo"])
def test_left_padded_batch_with_offsets_equals_each_sample_alone(preset, llama_dir):
    model = tiny_mllm(preset, llama_dir)
    pixels = torch.randn(2, 3, 32, 32)
    short, long = torch.randint(0, 90, (1, 3)), torch.randint(0, 90, (1, 7))
    batch = torch.cat([torch.cat([torch.full((1, 4), 95), short], 1), long])
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    offsets = torch.tensor([2, 5])  # real tokens before the image: padding is not counted
    together = model.generate(batch, pixels, attention_mask=mask, max_new_tokens=8, image_offset=offsets)
    alone = [model.generate(x, pixels[i:i + 1], max_new_tokens=8, image_offset=offsets[i:i + 1])
             for i, x in enumerate([short, long])]
    assert torch.equal(together, torch.cat(alone))


def test_bad_offsets_are_named(llama_dir):
    model = tiny_mllm("ee_mllm", llama_dir)
    ids, pixels = torch.randint(0, 96, (2, 6)), torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"image_offset\[1\]=7 is outside 0..6"):
        model(ids, pixels, image_offset=torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="one offset per sample"):
        model(ids, pixels, image_offset=torch.tensor([1, 2, 3]))
