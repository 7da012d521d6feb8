"""What each parameter of a model is for, declared by the component that owns it.

A module built for a role is tagged where it is built (`with_role(nn.Linear(...), ALIGNER)`);
a parameter's role is that of its nearest tagged module. The decoder is `LLM`, its aligner
copies `ALIGNER` (the last layer's `IDLE`: after it only text rows reach the LM head, so its
visual update gets exactly zero gradient), Flamingo's blocks `CROSS_ATTN`; the MLLM tags its
vision tower and projector. What trains in which stage is one table, `training/stages.py`
(as prismatic-vlms' `freeze_backbones(stage)`), never parameter-name matching.
"""

from __future__ import annotations

from torch import nn

VISION, PROJECTOR, LLM, ALIGNER, CROSS_ATTN, IDLE = "vision", "projector", "llm", "aligner", "cross_attn", "idle"
NEW = (ALIGNER, CROSS_ATTN, IDLE)  # parameters no LLM checkpoint has


def with_role(module: nn.Module, role: str) -> nn.Module:
    module.eelight_role = role
    return module


def parameter_roles(module: nn.Module) -> dict[str, str]:
    """Parameter name -> role, for every parameter under `module` (named as
    `module.named_parameters()` names them); untagged parameters are an error."""
    roles: dict[str, str] = {}
    for prefix, sub in module.named_modules():  # parents first: the nearest tag is written last
        role = getattr(sub, "eelight_role", None)
        if role is not None:
            roles.update({name: role for name, _ in sub.named_parameters(prefix=prefix)})
    missing = [name for name, _ in module.named_parameters() if name not in roles]
    if missing:
        raise ValueError(f"parameter {missing[0]!r} has no role ({len(missing)} without); tag its module "
                         "with models.roles.with_role where it is built")
    return {name: roles[name] for name, _ in module.named_parameters()}
