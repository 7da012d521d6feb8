"""Presets and `key=value` overrides applied to a model config: the one way they change one (a
run's base, an eval target, loading an export). Kept apart from `config.py` because it needs
OmegaConf (its dot-list merge types each value by the schema), which the model code that an
export bundles for `transformers` must not import (`eelight.hf_remote`)."""

from __future__ import annotations

from eelight.models.config import ModelConfig, preset_overrides


def apply_model_overrides(cfg: ModelConfig, items: list[str] | tuple[str, ...]) -> ModelConfig:
    """The one way presets and overrides change a model config (a run's base, an eval target,
    `eelight.export.load`): each item is `model_preset=NAME` (its variant fields) or a model
    field `key=value`, later items winning. Raises ValueError (or OmegaConf's error) naming the key."""
    from omegaconf import OmegaConf

    dotlist: list[str] = []
    for item in items:
        key, _, value = item.partition("=")
        dotlist += preset_overrides(value) if key == "model_preset" else [item]
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(dotlist)))
