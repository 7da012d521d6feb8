"""LoRA adapters on a component's linear layers, with `peft` (`inject_adapter_in_model`), and
their merge back into plain `nn.Linear` weights.

A component is a parameter role (`roles.py`: the LLM's decoder layers, the vision tower); only
linear layers whose own parameters have that role and whose name ends in one of `targets` get
an adapter, so Flamingo's cross-attention or EE-MLLM's fresh aligner copies (new modules with
the same short names) never do. The adapters' `lora_A` / `lora_B` modules get the role
`lora_<component>`, which says what trains (`training/stages.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from eelight.models.roles import parameter_roles, with_role

LORA_ROLE = "lora_{}"


def _targets(model: nn.Module, role: str, targets: Sequence[str]) -> list[str]:
    roles = parameter_roles(model)
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets
            and roles.get(f"{name}.weight") == role]


def add_lora(model: nn.Module, role: str, rank: int, alpha: float, dropout: float, targets: Sequence[str]) -> int:
    """Adapters on the `role` component's linear layers named in `targets`; returns how many.
    Raises ValueError naming the targets when none matches."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    names = _targets(model, role, targets)
    if not names:
        raise ValueError(f"recipe: no linear layer of the {role} is named any of {list(targets)}; set "
                         "recipe.lora.target_modules to its layer names (e.g. q_proj, v_proj)")
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names), model)
    for module in model.modules():
        if isinstance(module, LoraLayer) and not hasattr(module.lora_A, "eelight_role"):
            with_role(module.lora_A, LORA_ROLE.format(role))
            with_role(module.lora_B, LORA_ROLE.format(role))
    return len(names)


def has_lora(model: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W + B A * alpha / r) and put the plain
    `nn.Linear` back: the model's parameter names are again those of a model without LoRA."""
    from peft.tuners.lora import LoraLayer

    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in wrapped:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    return model
