"""Parity with Hugging Face `transformers` models, loaded through the production key maps."""

import pytest
import torch
from helpers import TINY_CLIP, hf_causal_lm, hf_llava, rel_err, save_llama, save_mistral, save_qwen2

from eelight.models import LLMConfig, VisionConfig, build_mllm, load_llava, model_config


def test_llava_preset_matches_hf_llava(llava_dir):
    ours = load_llava(str(llava_dir), "llava").eval()
    ref = hf_llava(llava_dir)
    nv = ours.num_visual_tokens
    assert nv == 16
    text = torch.randint(0, 90, (2, 9))
    pixels = torch.randn(2, 3, 32, 32)
    image_tok = torch.full((2, nv), ref.config.image_token_index)
    with torch.no_grad():
        expected = ref(input_ids=torch.cat([image_tok, text], 1), pixel_values=pixels).logits[:, nv:]
        got = ours(text, pixels).logits
    assert got.shape == expected.shape
    assert rel_err(got, expected) < 1e-5


def _llm_only(folder):
    return build_mllm(model_config("llava", llm=LLMConfig(path=str(folder)))).eval()


@pytest.mark.parametrize(
    "save",
    [
        save_llama,
        # Llama 3.1-style RoPE scaling and a non-default theta
        lambda d: save_llama(
            d,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16},
        ),
        lambda d: save_llama(d, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
        save_qwen2,  # qkv biases, tied embeddings
        save_mistral,
    ],
    ids=["llama", "llama3-rope", "linear-rope", "qwen2", "mistral"],
)
def test_llm_matches_hf_causal_lm(tmp_path, save):
    folder = save(tmp_path / "lm")
    ref, ours = hf_causal_lm(folder), _llm_only(folder)
    ids = torch.randint(0, 96, (2, 40))
    with torch.no_grad():
        assert rel_err(ours(ids).logits, ref(ids).logits) < 1e-5


def test_sharded_checkpoint_loads(tmp_path):
    from transformers import LlamaForCausalLM

    folder = save_llama(tmp_path / "one")
    LlamaForCausalLM.from_pretrained(folder).save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ids = torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        assert torch.equal(_llm_only(folder)(ids).logits, _llm_only(tmp_path / "sharded")(ids).logits)


def _save_vision(kind, folder, full):
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        SiglipConfig,
        SiglipModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    vision_cfg = (CLIPVisionConfig if kind == "clip" else SiglipVisionConfig)(**TINY_CLIP)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
    if full:
        cls, cfg_cls = (CLIPModel, CLIPConfig) if kind == "clip" else (SiglipModel, SiglipConfig)
        model = cls(cfg_cls(vision_config=vision_cfg.to_dict(), text_config=text))
        model.save_pretrained(folder)
        return (CLIPVisionModel if kind == "clip" else SiglipVisionModel).from_pretrained(folder).eval()
    model = (CLIPVisionModel if kind == "clip" else SiglipVisionModel)(vision_cfg)
    model.save_pretrained(folder)
    return model.eval()


@pytest.mark.parametrize("kind,full", [("clip", False), ("clip", True), ("siglip", False), ("siglip", True)])
def test_vision_tower_features_match_hf(tmp_path, kind, full):
    ref = _save_vision(kind, tmp_path / "v", full)
    cfg = model_config("ee_mllm", vision=VisionConfig(path=str(tmp_path / "v"), kind=kind, feature_layer=-2))
    tower = build_mllm(cfg).vision.eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref(pixels, output_hidden_states=True).hidden_states[-2]
        expected = expected[:, 1:] if kind == "clip" else expected  # LLaVA drops CLIP's CLS
        assert torch.equal(tower(pixels), expected)
    assert tower.num_tokens == 16


def test_ee_mllm_f_loads_llava_weights_and_differs_only_in_attention(llava_dir):
    llava, ee_f = load_llava(str(llava_dir), "llava").eval(), load_llava(str(llava_dir), "ee_mllm_f").eval()
    for (n1, p1), (n2, p2) in zip(llava.state_dict().items(), ee_f.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    text, pixels = torch.randint(0, 90, (1, 6)), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        # Same weights, different visual attention: the text logits change.
        assert rel_err(ee_f(text, pixels).logits, llava(text, pixels).logits) > 1e-3
        # Without an image the two are the same text-only LLM.
        assert torch.allclose(ee_f(text).logits, llava(text).logits, atol=1e-6)
