"""The training stages, in one table: which parameter roles (`models/roles.py`) train in each,
in which optimiser group (each group has its own learning rate: `optim.projector_lr`,
`optim.new_params_lr`, `optim.lr`), and whether the stage scores `eval.benchmarks`.
A role a stage does not name is frozen (the vision tower always; the LLM in align)."""

from __future__ import annotations

from dataclasses import dataclass, field

from eelight.models.roles import ALIGNER, CROSS_ATTN, LLM, PROJECTOR

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
