"""Configs reject what has no meaning; loaders and the model name what is wrong."""

import pytest
import torch
from helpers import save_llama
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from eelight.models import PRESETS, LLMConfig, ModelConfig, build_mllm, load_llava, model_config
from eelight.models.hf_loading import CheckpointError


def test_every_preset_builds_and_presets_need_exact_names():
    for name in PRESETS:
        assert isinstance(model_config(name), ModelConfig)
    with pytest.raises(ValueError, match=r"unknown model preset 'EE_MLLM'.*'ee_mllm'"):
        model_config("EE_MLLM")
    assert model_config("llava").visual_attn == "self" and model_config("flamingo").arch == "flamingo"


def test_bad_value_names_field_and_allowed_values():
    with pytest.raises(ValueError, match=r"model\.aligner='maybe'.*\['reuse', 'fresh', 'none', 'mlp'\]"):
        model_config("ee_mllm", aligner="maybe")
    with pytest.raises(ValueError, match=r"llm\.rope_type='yarn'"):
        LLMConfig(rope_type="yarn")
    with pytest.raises(ValueError, match=r"model\.projector_depth=0"):
        model_config("ee_mllm", projector_depth=0)


def test_meaningless_combination_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        model_config("llava", aligner="fresh")
    msg = str(err.value)
    assert "visual_attn=self aligner=fresh" in msg and "has no defined meaning" in msg
    assert "arch=decoder visual_attn=none aligner=reuse aligner_ffn=false" in msg
    with pytest.raises(ValueError, match="aligner_init='random' only applies to model.aligner=fresh"):
        model_config("ee_mllm", aligner_init="random")


def test_omegaconf_structured_config_validates_on_to_object():
    base = OmegaConf.structured(ModelConfig)
    good = OmegaConf.merge(base, OmegaConf.from_dotlist(["visual_attn=self", "aligner_ffn=true"]))
    assert OmegaConf.to_object(good).visual_attn == "self"
    with pytest.raises(Exception, match="projector_dept"):
        OmegaConf.merge(base, OmegaConf.from_dotlist(["projector_dept=2"]))  # unknown key
    with pytest.raises(ValueError, match="has no defined meaning"):
        OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.from_dotlist(["arch=flamingo"])))


def _tamper(folder, edit):
    path = folder / "model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda s: s.__setitem__("model.layers.1.mlp.gate_projx.weight", s.pop("model.layers.1.mlp.gate_proj.weight")),
         r"unexpected tensor 'model\.layers\.1\.mlp\.gate_projx\.weight'"),
        (lambda s: s.pop("model.layers.0.self_attn.k_proj.weight"),
         r"'layers\.0\.self_attn\.k_proj\.weight' is missing"),
        (lambda s: s.__setitem__("model.norm.weight", torch.ones(63)),
         r"'norm\.weight'.*shape \(63,\).*expects \(64,\)"),
        (lambda s: s.__setitem__("model.layers.0.self_attn.q_proj.bias", torch.zeros(64)),
         r"unexpected tensor 'model\.layers\.0\.self_attn\.q_proj\.bias'.*no key-map rule"),
    ],
    ids=["renamed", "missing", "misshaped", "extra-bias"],
)
def test_llm_checkpoint_errors_name_the_key(tmp_path, edit, message):
    folder = save_llama(tmp_path / "lm")
    _tamper(folder, edit)
    with pytest.raises(CheckpointError, match=message):
        build_mllm(model_config("ee_mllm", llm=LLMConfig(path=str(folder))))


def test_llava_checkpoint_errors_name_the_key(tmp_path):
    from helpers import save_llava

    folder = save_llava(tmp_path / "llava")
    _tamper(folder, lambda s: s.pop("multi_modal_projector.linear_2.bias"))
    with pytest.raises(CheckpointError, match=r"'projector\.net\.2\.bias' is missing"):
        load_llava(str(folder))


def test_missing_folder_and_unsupported_family(tmp_path):
    with pytest.raises(CheckpointError, match="config.json not found"):
        build_mllm(model_config("ee_mllm", llm=LLMConfig(path=str(tmp_path / "nope"))))
    folder = save_llama(tmp_path / "lm")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        build_mllm(model_config("ee_mllm", llm=LLMConfig(path=str(folder))))


def test_bad_inputs_have_clear_errors():
    model = build_mllm(model_config("ee_mllm", llm=LLMConfig(max_positions=24)))
    ids = torch.randint(0, 128, (1, 4))
    with pytest.raises(ValueError, match=r"pixel_values has shape \(1, 3, 64, 64\).*\(batch, 3, 32, 32\)"):
        model(ids, torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"pixel_values has shape \(1, 1, 32, 32\)"):
        model(ids, torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="16 visual \\+ 9 text tokens exceed the LLM's context of 24"):
        model(torch.randint(0, 128, (1, 9)), torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="input_ids is empty"):
        model(torch.zeros(1, 0, dtype=torch.long), torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="labels have no supervised token"):
        model(ids, torch.randn(1, 3, 32, 32), labels=torch.full_like(ids, -100))


def test_run_config_image_placement_is_validated():
    from eelight.training.config import ConfigError, load_run_config

    assert load_run_config().data.image_placement == "marker"
    assert load_run_config(overrides=["data.image_placement=start"]).data.image_placement == "start"
    with pytest.raises(ConfigError, match=r"data.image_placement='middle' is not allowed; choose one of"):
        load_run_config(overrides=["data.image_placement=middle"])


def test_resume_conflicts_allow_run_settings_and_name_everything_else():
    from eelight.training.config import load_run_config, resume_conflicts, to_yaml

    saved = to_yaml(load_run_config())
    ok = ["trainer.max_steps=900", "trainer.devices=2", "data.num_workers=4", "mlflow.experiment=x"]
    assert resume_conflicts(saved, load_run_config(overrides=ok)) == []
    bad = ["model.aligner=fresh", "trainer.accumulate_grad_batches=2", "data.seed=3"]
    assert resume_conflicts(saved, load_run_config(overrides=bad)) == [
        "data.seed: 0 -> 3", "model.aligner: 'reuse' -> 'fresh'", "trainer.accumulate_grad_batches: 1 -> 2"]
    older = saved.replace("  image_placement: marker\n", "")  # a run saved before the key existed
    assert resume_conflicts(older, load_run_config()) == ["data.image_placement: '(absent)' -> 'marker'"]


def test_a_preset_applied_through_the_one_function_is_the_preset_from_any_base():
    """`apply_model_overrides` (a run's base, an eval target, from_pretrained) gives exactly the
    named preset, whatever model config it starts from; later items win."""
    from eelight.models.config import PRESETS, ModelConfig, model_config
    from eelight.models.overrides import apply_model_overrides

    for name in PRESETS:
        for base in (ModelConfig(), model_config("flamingo"), model_config("ee_mllm_pool2")):
            assert apply_model_overrides(base, [f"model_preset={name}"]) == model_config(name), (name, base)
    got = apply_model_overrides(ModelConfig(), ["model_preset=llava", "aligner_ffn=false"])
    assert got == model_config("llava_no_ffn")
