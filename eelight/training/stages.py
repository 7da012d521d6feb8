"""The training stages, in one table: which parameter roles (`models/roles.py`) train in each,
in which optimiser group (each group has its own learning rate: `optim.projector_lr`,
`optim.new_params_lr`, `optim.lr`), and whether the stage scores `eval.benchmarks`.
A role a stage does not name is frozen (the vision tower always; the LLM in align).

A run's `recipe` (`training/config.py`) overrides the table per component: `frozen`, `full`
(trains in the component's own group) or `lora` (the component's base weights frozen, its LoRA
adapters, role `lora_<role>`, train in its group); `stage` keeps the table's choice."""

from __future__ import annotations

from dataclasses import dataclass, field

from eelight.models.lora import LORA_ROLE
from eelight.models.roles import ALIGNER, CROSS_ATTN, LLM, PROJECTOR, VISION

GROUPS = ("projector", "new", "llm")  # optimiser groups, in this order (checkpoints keep it)


@dataclass(frozen=True)
class Stage:
    trains: dict[str, str] = field(default_factory=dict)  # role -> optimiser group
    scores_benchmarks: bool = False


STAGE_TABLE: dict[str, Stage] = {
    "align": Stage({PROJECTOR: "projector", ALIGNER: "new", CROSS_ATTN: "new"}),
    "instruct": Stage({PROJECTOR: "projector", ALIGNER: "new", CROSS_ATTN: "new", LLM: "llm"},
                      scores_benchmarks=True),
}
STAGES = tuple(STAGE_TABLE)

# recipe component -> the roles it covers, and the optimiser group each trains in when `full`
COMPONENTS: dict[str, tuple[str, ...]] = {"llm": (LLM,), "vision": (VISION,), "projector": (PROJECTOR,),
                                          "new": (ALIGNER, CROSS_ATTN)}
GROUP_OF = {LLM: "llm", VISION: "llm", PROJECTOR: "projector", ALIGNER: "new", CROSS_ATTN: "new"}
LORA_COMPONENTS = ("llm", "vision")  # components LoRA may adapt (their linear layers are pretrained)


def trained_roles(stage: str, recipe=None) -> dict[str, str]:
    """Role -> optimiser group of what trains in `stage` under `recipe` (None: the table alone)."""
    trains = dict(STAGE_TABLE[stage].trains)
    for component, roles in COMPONENTS.items():
        mode = getattr(recipe, component, "stage") if recipe is not None else "stage"
        for role in roles:
            if mode in ("frozen", "lora"):
                trains.pop(role, None)
            if mode == "full":
                trains[role] = GROUP_OF[role]
            if mode == "lora":
                trains[LORA_ROLE.format(role)] = GROUP_OF[role]
    return trains
