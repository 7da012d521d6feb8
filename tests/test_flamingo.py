"""Flamingo baseline: gates at 0 give the LLM's text-only logits; training opens them."""

import torch
from helpers import hf_causal_lm, rel_err

from eelight.models import LLMConfig, build_mllm, model_config


def test_closed_gates_give_text_only_llm_logits(llama_dir):
    model = build_mllm(model_config("flamingo", llm=LLMConfig(path=str(llama_dir)))).eval()
    ids, pixels = torch.randint(0, 96, (2, 10)), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = hf_causal_lm(llama_dir)(ids).logits
        assert rel_err(model(ids, pixels).logits, expected) < 1e-5
    assert model.num_visual_tokens == 16


def test_cross_every_places_blocks():
    model = build_mllm(model_config("flamingo", cross_every=2, llm=LLMConfig(num_layers=4)))
    assert [layer.cross_attn is not None for layer in model.decoder.layers] == [True, False, True, False]
    assert all(layer.cross_attn is None for layer in build_mllm(model_config("ee_mllm")).decoder.layers)


def test_gradients_reach_gates_then_cross_attention(llama_dir):
    model = build_mllm(model_config("flamingo", llm=LLMConfig(path=str(llama_dir))))
    ids, pixels = torch.randint(0, 96, (2, 10)), torch.randn(2, 3, 32, 32)
    model(ids, pixels, labels=ids).loss.backward()
    blocks = [layer.cross_attn for layer in model.decoder.layers]
    # At tanh(0) = 0 only the gates see a gradient: d/da tanh(a) * x = x at a = 0.
    assert all(b.attn_gate.grad.abs().item() > 0 and b.ffn_gate.grad.abs().item() > 0 for b in blocks)
    assert all(b.q_proj.weight.grad.abs().sum() == 0 for b in blocks)
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    model.zero_grad()
    model(ids, pixels, labels=ids).loss.backward()
    for b in blocks:  # with the gates open the cross-attention weights learn too
        for p in (b.q_proj.weight, b.k_proj.weight, b.v_proj.weight, b.o_proj.weight, b.ffn.up_proj.weight):
            assert p.grad.abs().sum() > 0
    assert model.projector.net[0].weight.grad.abs().sum() > 0
