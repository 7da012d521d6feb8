"""The stage table (training/stages.py) over the roles the components declare (models/roles.py):
what trains in each stage, written here by parameter name, as the paper's recipe says."""

import pytest

from eelight.models.config import model_config
from eelight.models.mllm import build_mllm
from eelight.training.module import parameter_groups


def _expected(name: str, stage: str, last_layer: int) -> str | None:
    """The recipe by name: projector always; new modules (aligner copies but the last layer's,
    Flamingo blocks) always; the LLM in instruct; the vision tower never."""
    if name.startswith("projector."):
        return "projector"
    if ".cross_attn." in name or (".aligner_" in name and f"layers.{last_layer}." not in name):
        return "new"
    if name.startswith("decoder.") and ".aligner_" not in name:
        return "llm" if stage == "instruct" else None
    return None


@pytest.mark.parametrize("preset", ["ee_mllm", "llava", "flamingo", "ee_mllm_fresh", "ee_mllm_no_aligner"])
@pytest.mark.parametrize("stage", ["align", "instruct"])
def test_each_stage_trains_what_the_recipe_says(preset, stage):
    model = build_mllm(model_config(preset))
    last = len(model.decoder.layers) - 1
    names = {id(p): n for n, p in model.named_parameters()}
    got = {names[id(p)]: group for group, params in parameter_groups(model, stage).items() for p in params}
    for name, param in model.named_parameters():
        assert got.get(name) == _expected(name, stage, last), name
        assert param.requires_grad == (name in got), name


def test_new_parameters_are_those_no_llm_checkpoint_has():
    fresh = build_mllm(model_config("ee_mllm_fresh"))
    assert fresh.decoder.new_parameter_names() == [n for n, _ in fresh.decoder.named_parameters() if ".aligner_" in n]
    flamingo = build_mllm(model_config("flamingo"))
    assert flamingo.decoder.new_parameter_names() == [n for n, _ in flamingo.decoder.named_parameters()
                                                      if ".cross_attn." in n]
