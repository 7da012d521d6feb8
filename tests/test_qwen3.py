"""Qwen3 (per-head RMSNorm on queries and keys): logits, cached generation and batch invariance
equal Hugging Face's, through the production key maps, in the llava and ee_mllm presets."""

import pytest
import torch
from helpers import TINY_CLIP, TINY_LLM, composite_mask, hf_causal_lm, hf_llava, rel_err

from eelight.models import LLMConfig, build_mllm, load_llava, model_config

QWEN3 = {**TINY_LLM, "head_dim": 16, "rope_theta": 1e6, "tie_word_embeddings": True}


def _randomise_norms(model):
    """HF initialises the q/k norms to ones: make them matter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.uniform_(0.5, 1.5)


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**QWEN3))
    _randomise_norms(model)
    folder = tmp_path_factory.mktemp("qwen3")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def qwen3_llava_dir(tmp_path_factory):
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, Qwen3Config

    torch.manual_seed(1)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**TINY_CLIP), text_config=Qwen3Config(**QWEN3),
                      image_token_index=TINY_LLM["vocab_size"] - 1, image_seq_length=16)
    model = LlavaForConditionalGeneration(cfg)
    _randomise_norms(model)
    folder = tmp_path_factory.mktemp("qwen3_llava")
    model.save_pretrained(folder)
    return folder


def _ours(preset, folder):
    return build_mllm(model_config(preset, llm=LLMConfig(path=str(folder)))).eval()


def test_text_logits_equal_hf_qwen3(qwen3_dir):
    ours, ref = _ours("llava", qwen3_dir), hf_causal_lm(qwen3_dir)
    assert ours.cfg.llm.qk_norm and ours.cfg.llm.head_dim == 16
    ids = torch.randint(0, 96, (2, 30))
    with torch.no_grad():
        assert rel_err(ours(ids).logits, ref(ids).logits) < 1e-5


def test_llava_preset_equals_hf_llava_on_qwen3(qwen3_llava_dir):
    ours, ref = load_llava(str(qwen3_llava_dir), "llava").eval(), hf_llava(qwen3_llava_dir)
    nv = ours.num_visual_tokens
    text, pixels = torch.randint(0, 90, (2, 9)), torch.randn(2, 3, 32, 32)
    image = torch.full((2, nv), ref.config.image_token_index)
    with torch.no_grad():
        expected = ref(input_ids=torch.cat([image, text], 1), pixel_values=pixels).logits[:, nv:]
        assert rel_err(ours(text, pixels).logits, expected) < 1e-5


def test_composite_attention_normalises_visual_keys_as_hf_does(qwen3_dir):
    """EE-MLLM-F on Qwen3 equals HF Qwen3 under the composite mask (visual rows see only
    themselves): the visual tokens' keys go through k_norm like any key."""
    ours, ref = _ours("ee_mllm_f", qwen3_dir), hf_causal_lm(qwen3_dir)
    nv, nt = 16, 8
    visual, ids = torch.randn(2, nv, 64), torch.randint(0, 96, (2, nt))
    mask = composite_mask(nv, nt, 2)
    with torch.no_grad():
        embeds = torch.cat([visual, ref.model.embed_tokens(ids)], dim=1)
        expected = ref(inputs_embeds=embeds, attention_mask=mask).logits[:, nv:]
        assert rel_err(ours(ids, visual_tokens=visual).logits, expected) < 1e-5


@pytest.mark.parametrize("preset", ["llava", "ee_mllm"])
def test_cached_generation_and_a_padded_batch_on_qwen3(qwen3_dir, preset):
    model = _ours(preset, qwen3_dir)
    torch.manual_seed(3)
    pixels = torch.randn(3, 3, 32, 32)
    lengths = [4, 7, 2]
    ids, mask, alone = torch.full((3, 7), 95), torch.zeros(3, 7, dtype=torch.long), []
    for i, n in enumerate(lengths):
        sample = torch.randint(0, 90, (1, n))
        ids[i, 7 - n:], mask[i, 7 - n:] = sample[0], 1
        alone.append(model.generate(sample, pixels[i:i + 1], max_new_tokens=6))
    together = model.generate(ids, pixels, attention_mask=mask, max_new_tokens=6)
    assert torch.equal(together, torch.cat(alone))
    assert torch.equal(together, model.generate(ids, pixels, attention_mask=mask, max_new_tokens=6, use_cache=False))


def test_qwen3_with_sliding_window_is_refused_in_one_line(tmp_path):
    import json

    from transformers import Qwen3Config, Qwen3ForCausalLM

    Qwen3ForCausalLM(Qwen3Config(**QWEN3)).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "use_sliding_window": True}))
    with pytest.raises(ValueError, match="use_sliding_window=true are not supported"):
        _ours("llava", tmp_path)
