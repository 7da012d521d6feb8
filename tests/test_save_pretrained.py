"""models.folder.save_model / load_model: the folder rebuilds the same model (same logits),
tied embeddings included, and a variant override that keeps the parameters loads."""

import pytest
import torch

from eelight.models.config import LLMConfig, VisionConfig, model_config
from eelight.models.folder import load_model, save_model
from eelight.models.mllm import build_mllm

VISION = VisionConfig(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=1)


@pytest.mark.parametrize("tied", [False, True])
def test_round_trip_gives_the_same_logits(tmp_path, tied):
    torch.manual_seed(0)
    llm = LLMConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                    tie_embeddings=tied)
    model = build_mllm(model_config("ee_mllm_fresh", llm=llm, vision=VISION)).eval()
    ids, pixels = torch.randint(0, 40, (2, 7)), torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.cfg.aligner == "fresh" and loaded.cfg.llm.tie_embeddings == tied
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, pixels).logits, model(ids, pixels).logits, rtol=0, atol=0)
    if tied:
        assert loaded.decoder.lm_head.weight is loaded.decoder.embed_tokens.weight


def test_a_parameter_keeping_override_loads_and_a_bad_one_is_named(tmp_path):
    from eelight.errors import CheckpointError

    save_model(build_mllm(model_config("llava", vision=VISION)), tmp_path)
    assert load_model(tmp_path, ["visual_attn=none"]).cfg.visual_attn == "none"  # EE-MLLM-F
    with pytest.raises(CheckpointError, match="model overrides"):
        load_model(tmp_path, ["visual_attn=sideways"])
