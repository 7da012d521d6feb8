"""A run's training recipe applied to its model: LoRA adapters where `recipe` asks for them, and
the one way a trained stage's weights are read back (`load_trained`: eval, export), which for a
LoRA run rebuilds its frozen base (backbones, then `init_from`), loads the adapters and merges them.

A LoRA run's checkpoints hold only what trains (the adapters and any fully trained component):
the base weights are the backbone folders' and the `init_from` checkpoint's, read again on a
resume, so that file must stay where the run's config.yaml says.
"""

from __future__ import annotations

from pathlib import Path

import torch

from eelight.errors import CheckpointError, ConfigError
from eelight.models.lora import add_lora, merge_lora
from eelight.models.mllm import MLLM, build_mllm
from eelight.models.roles import LLM, VISION, parameter_roles
from eelight.training.checkpoint import init_from_checkpoint, read_checkpoint
from eelight.training.config import RecipeConfig, RunConfig
from eelight.training.stages import trained_roles

ROLE_OF = {"llm": LLM, "vision": VISION}


def apply_recipe(model: MLLM, recipe: RecipeConfig) -> None:
    """LoRA adapters on the components the recipe marks `lora` (after their weights are loaded)."""
    lora = recipe.lora
    for component, role in ROLE_OF.items():
        if getattr(recipe, component) == "lora":
            try:
                add_lora(model, role, lora.rank, lora.alpha, lora.dropout, lora.target_modules)
            except ValueError as exn:
                raise ConfigError(str(exn)) from exn


def trainable_names(model: MLLM, stage: str, recipe: RecipeConfig) -> set[str]:
    """Names of the parameters that train in `stage` under `recipe`."""
    trains = trained_roles(stage, recipe)
    return {name for name, role in parameter_roles(model).items() if role in trains}


def check_partial(state: dict[str, torch.Tensor], expected: set[str], source: str) -> None:
    """A LoRA checkpoint holds exactly what its recipe trains."""
    if set(state) != expected:
        extra, missing = sorted(set(state) - expected), sorted(expected - set(state))
        what = f"unexpected {extra[0]!r}" if extra else f"missing {missing[0]!r}"
        raise CheckpointError(f"{source} does not hold what this LoRA recipe trains ({what}; {len(state)} tensors, "
                              f"{len(expected)} expected): it was trained with another recipe or model")


def build_for_training(cfg: RunConfig, resolved, resume: Path | None) -> MLLM:
    """The model a stage trains: backbones, `init_from` on a fresh start (and on a LoRA run's
    resume: its checkpoint lacks the frozen base), then the recipe's adapters."""
    model = build_mllm(resolved)
    if cfg.init_from and (resume is None or cfg.recipe.uses_lora):
        init_from_checkpoint(model, cfg.init_from)
    apply_recipe(model, cfg.recipe)
    return model


def load_trained(cfg: RunConfig, checkpoint: str | Path) -> MLLM:
    """A trained stage's model (a run's config and its checkpoint), LoRA adapters merged."""
    if not cfg.recipe.uses_lora:
        model = build_mllm(cfg.model)
        init_from_checkpoint(model, checkpoint)
        return model
    model = build_for_training(cfg, cfg.model, None)
    state = {k.removeprefix("model."): v for k, v in read_checkpoint(checkpoint)["state_dict"].items()}
    check_partial(state, trainable_names(model, cfg.stage, cfg.recipe), f"checkpoint {checkpoint}")
    model.load_state_dict(state, strict=False)
    return merge_lora(model)
