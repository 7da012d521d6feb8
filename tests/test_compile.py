"""model.compile (issue 15): the decoder's layer stack traces as one graph with no graph
break (`torch._dynamo.explain`) for the decoder variants and Flamingo, in training and in the
cached prefill, padded or not; the compiled model (inductor) computes the eager one's loss
and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from eelight.models.config import LLMConfig, VisionConfig, model_config
from eelight.models.kv_cache import KVCache
from eelight.models.mllm import build_mllm

PRESETS = ["ee_mllm", "llava", "ee_mllm_fresh", "flamingo", "vica", "saisa", "shortv", "fastv", "aki"]
# The successors on this 2-layer LLM: ShortV's layer set and FastV's K fitted to its depth.
VARIANTS = {"shortv": ("llava", {"kv_only_layers": "1"}), "fastv": ("fastv", {"prune_after": 1})}
LLM = LLMConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                max_positions=128)
VISION = VisionConfig(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=1)


def _model(preset: str, **kw):
    torch.manual_seed(0)
    preset, extra = VARIANTS.get(preset, (preset, {}))
    return build_mllm(model_config(preset, llm=LLM, vision=VISION, **extra, **kw))


def _batch(b: int = 2, nt: int = 12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, LLM.vocab_size, (b, nt), generator=g)
    pixels = torch.randint(0, 256, (b, 3, 16, 16), dtype=torch.uint8, generator=g)
    return ids, pixels


def _decoder_call(model, run):
    """The (args, kwargs) the decoder is called with by `run()`."""
    seen = []
    handle = model.decoder.register_forward_pre_hook(lambda m, a, k: seen.append((a, k)), with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def _breaks(model, args, kwargs) -> int:
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model.decoder)(*args, **kwargs)
    assert explanation.graph_count == 1, explanation.break_reasons
    return explanation.graph_break_count


@pytest.mark.parametrize("preset", PRESETS)
def test_no_graph_break_in_training(preset):
    model = _model(preset).train()
    ids, pixels = _batch()
    args, kwargs = _decoder_call(model, lambda: model(ids, pixels, labels=ids))
    assert args[0].requires_grad  # the rows carry the embedding's and projector's graph
    assert _breaks(model, args, kwargs) == 0


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("padded", [False, True])
def test_no_graph_break_in_cached_prefill(preset, padded):
    model = _model(preset).eval()
    ids, pixels = _batch()
    valid = torch.ones_like(ids, dtype=torch.bool)
    if padded:
        valid[0, :3] = False  # left padding: the padding-mask path
    with torch.no_grad():
        features = model.vision_features(pixels)
        visual = model.projector(features)
        question_end = torch.full((ids.shape[0],), 8)  # AKI: the image reads text rows up to the 8th
        args, kwargs = _decoder_call(model, lambda: model._run(ids, visual, valid, KVCache(LLM.num_layers),
                                                               features=features, question_end=question_end))
        args = tuple(KVCache(LLM.num_layers) if isinstance(a, KVCache) else a for a in args)  # a fresh cache
        assert any(isinstance(a, KVCache) for a in args)
        assert (args[3] is not None) == (padded or preset == "aki")  # the mask argument (AKI: always dense)
        assert _breaks(model, args, kwargs) == 0


@pytest.mark.parametrize("preset", ["ee_mllm", "flamingo"])
def test_compiled_training_step_equals_eager(preset):
    eager = _model(preset).train()
    compiled = copy.deepcopy(eager)
    compiled.cfg = model_config(preset, llm=LLM, vision=VISION, compile=True)
    compiled.compile_decoder()
    ids, pixels = _batch()
    torch._dynamo.reset()
    losses = []
    for model in (eager, compiled):
        loss = model(ids, pixels, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert [n for n, _ in eager.state_dict().items()] == list(compiled.state_dict())  # checkpoints unchanged


def test_compile_mode_is_checked():
    with pytest.raises(ValueError, match="compile_mode"):
        model_config("ee_mllm", compile_mode="fast")
