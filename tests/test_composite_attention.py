"""Composite attention against independent references: the HF decoder under a 4-D mask
(aligner_ffn=true) and an explicit per-token loop written here (aligner_ffn=false)."""

import math

import pytest
import torch
from helpers import composite_mask, hf_causal_lm, rel_err

from eelight.models import LLMConfig, build_mllm, model_config

NV, NT = 16, 8


def _model(preset, llama_dir, **kw):
    return build_mllm(model_config(preset, llm=LLMConfig(path=str(llama_dir)), **kw)).eval()


def _inputs(d=64, b=2):
    return torch.randn(b, NV, d), torch.randint(0, 96, (b, NT))


def test_ee_with_visual_ffn_equals_hf_decoder_under_composite_mask(llama_dir):
    ours, ref = _model("ee_mllm_f", llama_dir), hf_causal_lm(llama_dir)
    visual, ids = _inputs()
    n = NV + NT
    mask = composite_mask(NV, NT, 2)
    embeds = torch.cat([visual, ref.model.embed_tokens(ids)], dim=1)
    with torch.no_grad():
        out = ref(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True)
        positions = torch.arange(n).expand(2, n)
        ours_h = ours.decoder.hidden_states(embeds, NV, positions)
        logits = ours(ids, visual_tokens=visual).logits
    # HF's last hidden state is after the final norm: compare the layers before it, all rows.
    for layer in range(len(ours_h) - 1):
        assert rel_err(ours_h[layer], out.hidden_states[layer]) < 1e-5, layer
    assert rel_err(ours.decoder.norm(ours_h[-1]), out.hidden_states[-1]) < 1e-5
    assert rel_err(logits, out.logits[:, NV:]) < 1e-5


def _rms(x, w, eps):
    return x / torch.sqrt((x * x).mean() + eps) * w


def _rope(vec, pos, theta):
    half = vec.shape[0] // 2
    out = vec.clone()
    for i in range(half):
        angle = pos * theta ** (-2 * i / vec.shape[0])
        a, b = vec[i], vec[i + half]
        out[i] = a * math.cos(angle) - b * math.sin(angle)
        out[i + half] = b * math.cos(angle) + a * math.sin(angle)
    return out


def reference_ee(model, visual, ids, offset=0):
    """EE-MLLM (aligner=reuse, aligner_ffn=false) for one sample, token by token, in float64.

    Rows are [I; T]; the sequence is T[:offset], I, T[offset:]: `pos` is each row's place in
    it, and a text query sees exactly the rows that come no later in the sequence."""
    dec, cfg = model.decoder, model.decoder.cfg
    p = {k: v.double() for k, v in dec.state_dict().items()}
    h = torch.cat([visual[0].double(), p["embed_tokens.weight"][ids[0]]])
    nv, n, hd, heads, rep = visual.shape[1], h.shape[0], cfg.dim_per_head, cfg.num_heads, cfg.num_heads // cfg.num_kv_heads
    order = list(range(nv, nv + offset)) + list(range(nv)) + list(range(nv + offset, n))  # rows in sequence order
    pos = {row: place for place, row in enumerate(order)}
    for li in range(cfg.num_layers):
        w = {k.split(f"layers.{li}.", 1)[1]: v for k, v in p.items() if k.startswith(f"layers.{li}.")}
        wq, wk, wv, wo = (w[f"self_attn.{x}_proj.weight"] for x in "qkvo")
        x = torch.stack([_rms(h[i], w["input_layernorm.weight"], cfg.rms_norm_eps) for i in range(n)])
        new = h.clone()
        for t in range(nv, n):  # text queries: keys are the rows up to t in sequence order
            seen = order[: pos[t] + 1]
            heads_out = []
            for head in range(heads):
                kvh = head // rep
                q = _rope(wq[head * hd:(head + 1) * hd] @ x[t], pos[t], cfg.rope_theta)
                keys = [_rope(wk[kvh * hd:(kvh + 1) * hd] @ x[j], pos[j], cfg.rope_theta) for j in seen]
                scores = torch.stack([q @ k for k in keys]) / math.sqrt(hd)
                probs = torch.softmax(scores, 0)
                heads_out.append(sum(p_j * (wv[kvh * hd:(kvh + 1) * hd] @ x[j]) for p_j, j in zip(probs, seen, strict=True)))
            new[t] = h[t] + wo @ torch.cat(heads_out)
        for i in range(nv):  # a visual token attends to itself only: output = its own value
            own = torch.cat([wv[(head // rep) * hd:(head // rep + 1) * hd] @ x[i] for head in range(heads)])
            new[i] = h[i] + wo @ own
        h = new
        for t in range(nv, n):  # FFN on text rows only
            y = _rms(h[t], w["post_attention_layernorm.weight"], cfg.rms_norm_eps)
            gate, up = w["mlp.gate_proj.weight"] @ y, w["mlp.up_proj.weight"] @ y
            h[t] = h[t] + w["mlp.down_proj.weight"] @ (torch.nn.functional.silu(gate) * up)
    text = torch.stack([_rms(h[t], p["norm.weight"], cfg.rms_norm_eps) for t in range(nv, n)])
    return text @ p["lm_head.weight"].T, h[:nv]


@pytest.mark.parametrize("offset", [0, 3, NT])  # image first (default), mid-text, after all text
def test_ee_equals_explicit_per_token_reference(llama_dir, offset):
    model = _model("ee_mllm", llama_dir)
    visual, ids = _inputs(b=1)
    with torch.no_grad():
        logits = model(ids, visual_tokens=visual, image_offset=torch.tensor([offset])).logits[0]
        if offset == 0:  # the default layout's visual rows, through the plain causal path
            embeds = torch.cat([visual, model.decoder.embed_tokens(ids)], 1)
            hidden = model.decoder.hidden_states(embeds, NV, torch.arange(NV + NT)[None])[-1]
    ref_logits, ref_visual = reference_ee(model, visual, ids, offset)
    assert rel_err(logits.double(), ref_logits) < 1e-5
    if offset == 0:
        assert rel_err(hidden[0, :NV].double(), ref_visual) < 1e-5


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_aligner_parameter_counts(llama_dir):
    llava, reuse = _model("llava", llama_dir), _model("ee_mllm", llama_dir)
    fresh = _model("ee_mllm_fresh", llama_dir)
    assert _n_params(reuse) == _n_params(llava)  # weight reuse adds nothing
    attn = reuse.decoder.layers[0].self_attn
    per_layer = attn.v_proj.weight.numel() + attn.o_proj.weight.numel()
    assert _n_params(fresh) - _n_params(reuse) == reuse.decoder.cfg.num_layers * per_layer
    for layer in fresh.decoder.layers:
        a = layer.self_attn
        assert a.aligner_v.weight.shape == a.v_proj.weight.shape
        assert a.aligner_o.weight.shape == a.o_proj.weight.shape


def test_fresh_copy_starts_equal_to_reuse_and_random_does_not(llama_dir):
    visual, ids = _inputs()
    with torch.no_grad():
        reuse = _model("ee_mllm", llama_dir)(ids, visual_tokens=visual).logits
        copy = _model("ee_mllm_fresh", llama_dir)(ids, visual_tokens=visual).logits
        rand = _model("ee_mllm_fresh_random", llama_dir)(ids, visual_tokens=visual).logits
    assert torch.allclose(copy, reuse, atol=1e-6)
    assert rel_err(rand, reuse) > 1e-3


def test_aligner_none_keeps_visual_tokens_at_every_layer(llama_dir):
    model = _model("ee_mllm_no_aligner", llama_dir)
    pixels, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 96, (2, NT))
    with torch.no_grad():
        visual = model.encode_images(pixels)
        embeds = torch.cat([visual, model.decoder.embed_tokens(ids)], 1)
        states = model.decoder.hidden_states(embeds, NV, torch.arange(NV + NT).expand(2, -1))
    for layer_out in states:
        assert torch.equal(layer_out[:, :NV], visual)
    assert not torch.equal(states[-1][:, NV:], states[0][:, NV:])  # text rows do move
