"""EE-MLLM's successors (docs/DESIGN.md §8) against an explicit per-token reference in float64,
written here from the definitions (which rows query, which keys each query sees, how the visual
rows move, FastV's ranking), not from the implementation; and their generation, padding and
strict loading of a Hugging Face Llama."""

import math

import pytest
import torch
from helpers import rel_err, save_llama

from eelight.models import LLMConfig, build_mllm, model_config

N_LAYERS, NT = 4, 7
# What each variant means per layer of a 4-layer LLM, from DESIGN §8 (the test's own table):
# visual rows query (LLaVA) / text sees the visual keys / visual rows pass the FFN / SAISA / FastV.
VICA_4 = sorted({li * N_LAYERS // 32 for li in (0, 1, 7, 8, 9, 10, 11, 14)})  # ViCA's 7B set, scaled: {0, 1}
CASES = {
    "vica": dict(preset="vica", queries=[0] * 4, sees=[int(li in VICA_4) for li in range(4)], ffn=[0] * 4),
    "shortv": dict(preset="llava", kw={"kv_only_layers": "1,3"}, queries=[1, 0, 1, 0], sees=[1] * 4,
                   ffn=[1, 0, 1, 0]),
    "saisa": dict(preset="saisa", queries=[0] * 4, sees=[1] * 4, ffn=[0] * 4, saisa=True),
    "fastv": dict(preset="fastv", queries=[1] * 4, sees=[1] * 4, ffn=[1] * 4, prune=(2, 0.5)),
    "fastv_r75": dict(preset="fastv_r75", queries=[1] * 4, sees=[1] * 4, ffn=[1] * 4, prune=(2, 0.75)),
    "aki": dict(preset="aki", queries=[1] * 4, sees=[1] * 4, ffn=[1] * 4, question_end=5),
    "ee_mllm_fastv": dict(preset="ee_mllm", kw={"prune_after": 1, "prune_ratio": 0.5, "aligner": "none"},
                          queries=[0] * 4, sees=[1] * 4, ffn=[0] * 4, prune=(1, 0.5)),
}


@pytest.fixture(scope="module")
def llama4(tmp_path_factory):
    return save_llama(tmp_path_factory.mktemp("llama4"), num_hidden_layers=N_LAYERS)


def _model(case, llama4):
    torch.manual_seed(0)
    model = build_mllm(model_config(case["preset"], llm=LLMConfig(path=str(llama4)), **case.get("kw", {}))).eval()
    with torch.no_grad():  # SAISA's MLPs start random; make them matter as much as the rows they replace
        for name, p in model.named_parameters():
            if "visual_mlp" in name:
                p.normal_(0, 0.3)
    return model


def _rms(x, w, eps):
    return x / torch.sqrt((x * x).mean() + eps) * w


def _rope(vec, pos, theta):
    half = vec.shape[0] // 2
    i = torch.arange(half, dtype=torch.float64)
    angle = pos * theta ** (-2 * i / vec.shape[0])
    a, b = vec[:half], vec[half:]
    return torch.cat([a * torch.cos(angle) - b * torch.sin(angle), b * torch.cos(angle) + a * torch.sin(angle)])


def _attend(w, x, query, keys, pos, cfg):
    """One query row over `keys` (row indices): (output before Wo, head-averaged probabilities)."""
    hd, heads = cfg.dim_per_head, cfg.num_heads
    rep = heads // cfg.num_kv_heads
    outs, probs = [], []
    for head in range(heads):
        kv = slice((head // rep) * hd, (head // rep + 1) * hd)
        q = _rope(w["self_attn.q_proj.weight"][head * hd:(head + 1) * hd] @ x[query], pos[query], cfg.rope_theta)
        scores = torch.stack([q @ _rope(w["self_attn.k_proj.weight"][kv] @ x[j], pos[j], cfg.rope_theta)
                              for j in keys]) / math.sqrt(hd)
        p = torch.softmax(scores, 0)
        outs.append(sum(pj * (w["self_attn.v_proj.weight"][kv] @ x[j]) for pj, j in zip(p, keys, strict=True)))
        probs.append(p)
    return torch.cat(outs), torch.stack(probs).mean(0)


def _reads(r, j, nv, offset, case):
    """AKI: image row r also sees text row j after the image and before the first answer."""
    return r < nv and j >= nv and offset <= j - nv < case.get("question_end", 0)


def reference(model, visual, features, ids, offset, case):
    """One sample: rows [I; T], sequence T[:offset], I, T[offset:] (`pos`: each row's place)."""
    dec, cfg = model.decoder, model.decoder.cfg
    p = {k: v.double() for k, v in dec.state_dict().items()}
    h = torch.cat([visual[0].double(), p["embed_tokens.weight"][ids[0]]])
    nv, n = visual.shape[1], h.shape[0]
    order = list(range(nv, nv + offset)) + list(range(nv)) + list(range(nv + offset, n))
    pos = {row: place for place, row in enumerate(order)}
    alive = set(range(n))  # rows FastV has not dropped
    for li in range(cfg.num_layers):
        w = {k.split(f"layers.{li}.", 1)[1]: v for k, v in p.items() if k.startswith(f"layers.{li}.")}
        vis = [i for i in range(nv) if i in alive]
        if case.get("saisa"):  # the visual rows re-made from the features by this layer's MLP
            for i in vis:
                hid = torch.nn.functional.gelu(w["visual_mlp.0.weight"] @ features[0, i].double() + w["visual_mlp.0.bias"])
                h[i] = w["visual_mlp.2.weight"] @ hid + w["visual_mlp.2.bias"]
        x = {i: _rms(h[i], w["input_layernorm.weight"], cfg.rms_norm_eps) for i in alive}
        new = h.clone()
        queries = list(range(nv, n)) + (vis if case["queries"][li] else [])
        ranking = None
        for r in queries:
            keys = [j for j in order if j in alive and (pos[j] <= pos[r] or _reads(r, j, nv, offset, case))
                    and (r < nv or j >= nv or case["sees"][li])]
            out, probs = _attend(w, x, r, keys, pos, cfg)
            new[r] = h[r] + w["self_attn.o_proj.weight"] @ out
            if r == n - 1:  # the last query's attention over the visual tokens (FastV)
                ranking = {j: pj for j, pj in zip(keys, probs, strict=True) if j < nv}
        h = new
        for r in list(range(nv, n)) + (vis if case["ffn"][li] else []):
            y = _rms(h[r], w["post_attention_layernorm.weight"], cfg.rms_norm_eps)
            gate, up = w["mlp.gate_proj.weight"] @ y, w["mlp.up_proj.weight"] @ y
            h[r] = h[r] + w["mlp.down_proj.weight"] @ (torch.nn.functional.silu(gate) * up)
        if case.get("prune") and li == case["prune"][0] - 1:
            keep = round((1 - case["prune"][1]) * nv)
            kept = sorted(ranking, key=lambda j: -ranking[j])[:keep]
            alive -= set(range(nv)) - set(kept)
    text = torch.stack([_rms(h[t], p["norm.weight"], cfg.rms_norm_eps) for t in range(nv, n)])
    return text @ p["lm_head.weight"].T


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("offset", [0, 3])  # image first; mid-text (its <image> marker after 3 tokens)
def test_equals_the_per_token_reference(llama4, name, offset):
    case = CASES[name]
    model = _model(case, llama4)
    torch.manual_seed(1)
    pixels, ids = torch.randn(1, 3, 32, 32), torch.randint(0, 96, (1, NT))
    with torch.no_grad():
        logits = model(ids, pixels, image_offset=torch.tensor([offset]),
                       question_end=torch.tensor([case.get("question_end", NT)])).logits[0]
        features = model.vision_features(pixels)
        visual = model.projector(features)
    assert rel_err(logits.double(), reference(model, visual, features, ids, offset, case)) < 1e-5


@pytest.mark.parametrize("name", sorted(CASES))
def test_cached_generation_equals_uncached_and_a_padded_batch_each_sample(llama4, name):
    model = _model(CASES[name], llama4)
    torch.manual_seed(2)
    pixels = torch.randn(8, 3, 32, 32)
    lengths = [3, 7, 5, 7, 2, 6, 4, 7]
    ids = torch.full((8, 7), 95)
    mask = torch.zeros(8, 7, dtype=torch.long)
    alone = []
    for i, n in enumerate(lengths):
        sample = torch.randint(0, 90, (1, n))
        ids[i, 7 - n:], mask[i, 7 - n:] = sample[0], 1  # left padding
        alone.append(model.generate(sample, pixels[i:i + 1], max_new_tokens=6, question_end=n - 1))
    question_end = torch.tensor(lengths) - 1  # AKI's image reads all but each prompt's last token
    together = model.generate(ids, pixels, attention_mask=mask, max_new_tokens=6, question_end=question_end)
    assert torch.equal(together, torch.cat(alone))
    assert torch.equal(together, model.generate(ids, pixels, attention_mask=mask, max_new_tokens=6, use_cache=False,
                                                question_end=question_end))


def test_vica_layers_outside_its_set_hold_no_visual_keys_in_the_cache(llama4):
    from eelight.models.kv_cache import KVCache

    model = _model(CASES["vica"], llama4)
    cache = KVCache(N_LAYERS)
    ids = torch.randint(0, 90, (2, NT))
    with torch.no_grad():
        model._run(ids, model.encode_images(torch.randn(2, 3, 32, 32)), None, cache)
    nv = model.num_visual_tokens
    assert [layer.k.shape[1] for layer in cache.layers] == [nv + NT if li in VICA_4 else NT for li in range(4)]


def test_fastv_layers_after_k_cache_only_the_kept_tokens(llama4):
    from eelight.models.kv_cache import KVCache

    model = _model(CASES["fastv"], llama4)
    cache = KVCache(N_LAYERS)
    with torch.no_grad():
        model._run(torch.randint(0, 90, (2, NT)), model.encode_images(torch.randn(2, 3, 32, 32)), None, cache)
    nv = model.num_visual_tokens
    assert [layer.k.shape[1] for layer in cache.layers] == [nv + NT] * 2 + [nv // 2 + NT] * 2


def test_saisa_adds_one_mlp_per_layer_that_trains_with_the_new_modules(llama4):
    from eelight.training.module import parameter_groups

    model = _model(CASES["saisa"], llama4)
    new = set(model.decoder.new_parameter_names())
    assert new == {f"layers.{li}.visual_mlp.{k}.{w}" for li in range(N_LAYERS) for k in (0, 2) for w in ("weight", "bias")}
    groups = parameter_groups(model, "align")
    params = dict(model.named_parameters())
    assert {id(x) for x in groups["new"]} == {id(params["decoder." + n]) for n in new}


@pytest.mark.parametrize("override,message", [
    ("text_visual_layers=vica", "needs visual_attn=none aligner=none"),
    ("kv_only_layers=1", "applies to a LLaVA model"),
    ("text_visual_layers=first", "is not a layer set"),
])
def test_meaningless_combinations_are_refused(override, message):
    from eelight.models.overrides import apply_model_overrides

    with pytest.raises(ValueError, match=message):
        apply_model_overrides(model_config("ee_mllm"), [override])


def test_a_layer_set_beyond_the_llm_is_refused_at_build(llama4):
    with pytest.raises(ValueError, match="names layer 7, but the LLM has 4 layers"):
        build_mllm(model_config("llava", llm=LLMConfig(path=str(llama4)), kv_only_layers="7"))
    with pytest.raises(ValueError, match="prune_after=4 must be below"):
        build_mllm(model_config("fastv", llm=LLMConfig(path=str(llama4)), prune_after=4))
