"""Training recipes (frozen / full / LoRA per component, with peft): a LoRA step changes only the
adapters and what else trains; checkpoints hold only that; resume; the merged model (eval,
export in both formats) equals the unmerged one."""

import pytest
import torch

from eelight.errors import CheckpointError, ConfigError
from eelight.models.lora import add_lora, has_lora, merge_lora
from eelight.models.roles import LLM, VISION, parameter_roles
from eelight.safe_load import load_file
from eelight.training.config import RecipeConfig, load_run_config
from eelight.training.module import parameter_groups
from eelight.training.stages import trained_roles

EXP = ["experiments/ee_mllm_tiny.yaml"]
INSTRUCT = EXP + ["experiments/stages/instruct.yaml"]


def test_recipes_override_the_stage_table():
    assert trained_roles("align", RecipeConfig()) == trained_roles("align")
    assert "llm" in trained_roles("align", RecipeConfig(llm="full")).values()
    lora = trained_roles("instruct", RecipeConfig(llm="lora", projector="frozen"))
    assert LLM not in lora and "lora_llm" in lora and "projector" not in lora
    assert trained_roles("instruct", RecipeConfig(vision="full"))[VISION] == "llm"


def test_adapters_go_on_the_named_layers_of_one_component_only(llama_dir):
    from helpers import tiny_mllm

    model = tiny_mllm("ee_mllm_fresh", llama_dir)  # its aligner copies are also named v/o: they get none
    x = torch.randint(0, 90, (2, 7)), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(*x).logits
    assert add_lora(model, LLM, 4, 8.0, 0.0, ["q_proj", "v_proj"]) == 2 * 2
    roles = parameter_roles(model)
    lora = sorted(n for n, r in roles.items() if r == "lora_llm")
    assert len(lora) == 8 and all(".self_attn.q_proj." in n or ".self_attn.v_proj." in n for n in lora)
    assert not any("aligner" in n for n in lora)
    with torch.no_grad():
        assert torch.equal(model(*x).logits, before)  # B starts at zero: the adapted model is the base one
        for name, p in model.named_parameters():
            if name.endswith("lora_B.default.weight"):
                p.normal_(0, 0.1)
        adapted = model(*x).logits
    assert not torch.allclose(adapted, before)
    merged = merge_lora(model)
    assert not has_lora(merged) and "decoder.layers.0.self_attn.q_proj.weight" in merged.state_dict()
    with torch.no_grad():
        assert (merged(*x).logits - adapted).abs().max() < 1e-5
    with pytest.raises(ValueError, match="no linear layer of the vision"):
        add_lora(model, VISION, 4, 8.0, 0.0, ["gate_proj"])


def _train(env, stage_files, *extra):
    from eelight.training.run import train

    cfg = load_run_config(stage_files, env["overrides"] + list(extra))
    return cfg, train(cfg)


@pytest.fixture(scope="module")
def align_ckpt(probe_env):
    _, result = _train(probe_env, EXP, "model_preset=llava", "name=lora_base", "trainer.max_steps=4")
    return result["checkpoint"]


@pytest.mark.slow
@pytest.mark.parametrize("component", ["llm", "vision"])
def test_a_lora_step_changes_only_what_trains_and_the_checkpoint_holds_only_that(probe_env, align_ckpt, component):
    from eelight.models.mllm import build_mllm
    from eelight.training.checkpoint import init_from_checkpoint
    from eelight.training.recipe import load_trained

    cfg, result = _train(probe_env, INSTRUCT, "model_preset=llava", f"name=lora_{component}", "trainer.max_steps=3",
                         f"init_from={align_ckpt}", f"recipe.{component}=lora", "recipe.lora.rank=4",
                         "eval.benchmarks=[]")
    saved = {k.removeprefix("model."): v for k, v in load_file(result["checkpoint"])["state_dict"].items()}
    base = build_mllm(cfg.model)
    init_from_checkpoint(base, align_ckpt)
    # the checkpoint holds what trained, nothing else: the adapters (and their role says whose),
    # the projector (instruct trains it) and, for a vision LoRA, the LLM (instruct trains it fully)
    lora_layers = {k.rsplit(".lora_", 1)[0] for k in saved if ".lora_" in k}
    full = ("projector.",) + (("decoder.",) if component == "vision" else ())
    assert lora_layers and all(".lora_" in k or k.startswith(full) for k in saved)
    assert all("base_layer" not in k for k in saved)
    prefix = "decoder." if component == "llm" else "vision."
    assert all(layer.startswith(prefix) for layer in lora_layers)
    # B starts at zero and moves with any gradient: every adapter trained, except (vision) those of
    # the tower's last layer, after the features the model reads (feature_layer=-2)
    untrained = {k.rsplit(".lora_", 1)[0] for k in saved if "lora_B" in k and saved[k].abs().sum() == 0}
    assert untrained == ({x for x in lora_layers if ".layers.1." in x} if component == "vision" else set())
    merged = load_trained(cfg, result["checkpoint"])
    old, new = base.state_dict(), merged.state_dict()
    changed = {k.rsplit(".", 1)[0] for k in old if not torch.equal(old[k], new[k]) and k.startswith(prefix)}
    assert changed == lora_layers - untrained  # exactly the trained adapters' layers moved (by the merge)
    if component == "llm":
        assert all(torch.equal(old[k], new[k]) for k in old if k.startswith("vision."))  # frozen stays


@pytest.mark.slow
def test_a_lora_run_resumes_and_exports_merged_in_both_formats(probe_env, align_ckpt, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from eelight.export import export_model, load
    from eelight.training.recipe import build_for_training, check_partial, trainable_names

    args = ["model_preset=llava", "name=lora_resume", f"init_from={align_ckpt}", "recipe.llm=lora",
            "recipe.lora.rank=4", "eval.benchmarks=[]"]
    cfg, first = _train(probe_env, INSTRUCT, *args, "trainer.max_steps=2")
    cfg, second = _train(probe_env, INSTRUCT, *args, "trainer.max_steps=4")  # the rerun resumes at step 2
    assert second["global_step"] == 4 and second["resumed_from_step"] == 2
    # the unmerged model: base + adapters from the checkpoint
    unmerged = build_for_training(cfg, cfg.model, None)
    state = {k.removeprefix("model."): v for k, v in load_file(second["checkpoint"])["state_dict"].items()}
    parameter_groups(unmerged, cfg.stage, cfg.recipe)
    check_partial(state, trainable_names(unmerged, cfg.stage, cfg.recipe), "test")
    unmerged.load_state_dict(state, strict=False)
    unmerged.eval()
    ids, pixels = torch.randint(5, 60, (1, 9)), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = unmerged(ids, pixels, image_offset=2).logits
    ours = load(export_model(cfg.run_dir / "config.yaml", second["checkpoint"], tmp_path / "ours"))
    assert not has_lora(ours)
    hf_dir = export_model(cfg.run_dir / "config.yaml", second["checkpoint"], tmp_path / "hf", fmt="hf")
    hf = LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
    nv = ours.num_visual_tokens
    image = torch.full((1, nv), hf.config.image_token_id)
    with torch.no_grad():
        assert (ours(ids, pixels, image_offset=2).logits - expected).abs().max() <= 1e-5
        theirs = hf(input_ids=torch.cat([ids[:, :2], image, ids[:, 2:]], 1), pixel_values=pixels).logits
    text = torch.cat([theirs[:, :2], theirs[:, 2 + nv:]], 1)[..., :expected.shape[-1]]
    assert (text - expected).abs().max() <= 1e-5


def test_recipe_errors_are_one_line(probe_env):
    with pytest.raises(ConfigError, match="recipe.llm='lorra'"):
        load_run_config(EXP, ["recipe.llm=lorra"])
    with pytest.raises(ConfigError, match="recipe.projector='lora'"):
        load_run_config(EXP, ["recipe.projector=lora"])
    with pytest.raises(ConfigError, match="target_modules is empty"):
        load_run_config(EXP, ["recipe.lora.target_modules=[]"])
    from eelight.training.config import check_trainable

    with pytest.raises(ConfigError, match="trainer.strategy=fsdp"):
        check_trainable(load_run_config(EXP, ["recipe.llm=lora", "trainer.strategy=fsdp"]))


def test_a_checkpoint_of_another_recipe_is_refused(llama_dir):
    from helpers import tiny_mllm

    from eelight.training.recipe import check_partial

    model = tiny_mllm("llava", llama_dir)
    add_lora(model, LLM, 2, 4.0, 0.0, ["q_proj"])
    with pytest.raises(CheckpointError, match="another recipe"):
        check_partial({"projector.net.0.weight": torch.zeros(1)}, {"projector.net.0.weight", "x"}, "ckpt")
