"""Sweep files (`sweeps/NAME.yaml`): an Optuna study over run-config keys.

    name: weight_reuse
    experiment: [experiments/ee_mllm_tiny.yaml]       # base run config
    stages: [align, instruct]                         # each trial runs these in order
    stage_configs: {instruct: [experiments/stages/instruct.yaml]}
    overrides: [trainer.max_steps=100]                # every trial, every stage
    stage_overrides: {instruct: [trainer.max_steps=300]}   # one stage (after `overrides`)
    space:
      model.aligner: {type: grid, values: [reuse, fresh, none]}    # variant axes: grid
      optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true} # sampled (TPE)
    seeds: [0, 1, 2]                                  # repeats: a grid axis
    data_sizes: [500, 1000]                           # data.subset: a grid axis
    reference: "model.aligner=reuse"                  # report: paired differences against it
    controls: ["model.aligner=none"]                  # report: must lose to the best variant
    objective: {metric: probe/accuracy, direction: maximize}   # any evaluator metric, e.g.
                                                  # textvqa/accuracy with eval.benchmarks=[textvqa]

Every grid point (grid axes x seeds x data sizes, x `trials_per_point`) is one trial;
the other distributions are sampled per trial by `sampler`. A file with an unknown key,
a value the run config rejects, or an empty space fails before any trial runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eelight.config_rules import SEED_MAX, above, at_least, between, check_fields, nonempty, one_of
from eelight.errors import ConfigError, first_line
from eelight.training.config import STAGES, RunConfig, check_trainable, load_run_config, load_yaml

TYPES = ("grid", "categorical", "int", "float")
SAMPLERS = ("tpe", "random")
PRUNERS = ("none", "median")


@dataclass
class Distribution:
    type: str = one_of(TYPES, "grid")
    values: list[Any] | None = None  # grid / categorical
    low: float | None = None  # int / float
    high: float | None = None
    log: bool = False
    step: float | None = above(0.0, None)


@dataclass
class Objective:
    metric: str = "probe/accuracy"
    direction: str = one_of(("maximize", "minimize"), "maximize")


@dataclass
class TrainingFree:
    """Variants scored on the weights of every finished trial of one grid value, with no training
    of their own (FastV, ShortV, EE-MLLM-F on LLaVA's weights): each is a report row, paired by
    seed with the trials it was applied to, at its own forward FLOPs."""

    apply_to: str = ""  # the grid value, e.g. model_preset=llava (not `on:`: YAML reads that as true)
    variants: list[str] = field(default_factory=list)  # model overrides, e.g. "model_preset=fastv model.prune_after=1"


@dataclass
class SweepConfig:
    name: str = nonempty("sweep")
    experiment: list[str] = field(default_factory=lambda: ["experiments/ee_mllm_tiny.yaml"])
    stages: list[str] = one_of(STAGES, default_factory=lambda: ["align", "instruct"])
    stage_configs: dict[str, list[str]] = field(
        default_factory=lambda: {"instruct": ["experiments/stages/instruct.yaml"]})
    overrides: list[str] = field(default_factory=list)
    stage_overrides: dict[str, list[str]] = field(default_factory=dict)  # per stage, after `overrides`
    space: dict[str, Distribution] = field(default_factory=dict)
    seeds: list[int] = between(0, SEED_MAX, default_factory=lambda: [0])
    data_sizes: list[int] | None = at_least(1, None)  # None: the full training set
    trials_per_point: int = at_least(1, 1)
    objective: Objective = field(default_factory=Objective)
    sampler: str = one_of(SAMPLERS, "tpe")
    pruner: str = one_of(PRUNERS, "none")
    storage: str | None = None  # Optuna RDB URL; None: sqlite file under out_dir/<name>/
    reference: str | None = None  # the variant paired differences are taken against (None: the first)
    controls: list[str] = field(default_factory=list)  # variants that must lose: the report checks they do
    training_free: TrainingFree = field(default_factory=TrainingFree)
    out_dir: str = nonempty("sweeps_out")

    def stage_config(self, stage: str, point: list[str] | tuple[str, ...] = (),
                     run: list[str] | tuple[str, ...] = ()) -> RunConfig:
        """A stage's run config, composed in the one order every caller uses: the base experiment
        and the stage's files; the sweep's `overrides`; the grid point's (and sampled) values; the
        stage's own `stage_overrides` (so `instruct: [data.subset=null]` beats a data size);
        `stage=`; last `run`, where and under which MLflow run a trial's stage runs."""
        return load_run_config(self.experiment + self.stage_configs.get(stage, []),
                               [*self.overrides, *point, *self.stage_overrides.get(stage, []), f"stage={stage}", *run])

    def grid_axes(self) -> dict[str, list[Any]]:
        axes = {k: list(d.values) for k, d in self.space.items() if d.type == "grid"}
        axes["seed"] = list(self.seeds)
        axes["data_size"] = list(self.data_sizes) if self.data_sizes else [None]
        return axes

    def grid_points(self) -> list[dict[str, Any]]:
        axes = self.grid_axes()
        points = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
        return [{**p, "repeat": r} for p in points for r in range(self.trials_per_point)]


def point_key(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={point[k]}" for k in sorted(point))


def point_overrides(point: dict[str, Any]) -> list[str]:
    """Run-config overrides for a grid point (seed and data size included)."""
    out = [f"{k}={v}" for k, v in point.items() if k not in ("seed", "data_size", "repeat")]
    out += [f"seed={point['seed']}", f"data.seed={point['seed']}"]
    if point["data_size"] is not None:
        out.append(f"data.subset={point['data_size']}")
    return out


def _check(sweep: SweepConfig) -> None:
    if not sweep.space:
        raise ConfigError(f"sweep {sweep.name!r}: the search space (`space:`) is empty; name at least one "
                          "config key to vary, e.g. model.aligner: {type: grid, values: [reuse, fresh]}")
    try:
        check_fields(sweep, "")
    except ValueError as exn:
        raise ConfigError(f"sweep {sweep.name!r}: {exn}") from exn
    for key, d in sweep.space.items():
        if d.type in ("grid", "categorical") and not d.values:
            raise ConfigError(f"sweep space {key!r}: type={d.type} needs a non-empty `values` list")
        if d.type in ("int", "float") and (d.low is None or d.high is None or d.low > d.high):
            raise ConfigError(f"sweep space {key!r}: type={d.type} needs low <= high")
        if d.type in ("int", "float") and d.log and d.low is not None and d.low <= 0:
            raise ConfigError(f"sweep space {key!r}: log=true needs low > 0 (got low={d.low})")
    _check_objective(sweep)
    _check_training_free(sweep)
    # Every value a trial can take must make a valid run config: unknown keys and bad values
    # fail here, before any trial runs.
    for stage in sweep.stages:
        for key, d in sweep.space.items():
            values = d.values if d.type in ("grid", "categorical") else [d.low, d.high]
            if d.type == "int":
                values = [int(v) for v in values]
            for value in values:
                try:
                    check_trainable(sweep.stage_config(stage, [f"{key}={value}"]))
                except ConfigError as exn:
                    raise ConfigError(f"sweep space {key!r} value {value!r}: {exn}") from exn


def _check_training_free(sweep: SweepConfig) -> None:
    """`training_free.apply_to` is one of the grid's values; each variant is a model override."""
    from eelight.models.overrides import apply_model_overrides

    tf = sweep.training_free
    if not tf.variants:
        return
    key, _, value = tf.apply_to.partition("=")
    d = sweep.space.get(key)
    if d is None or d.type != "grid" or value not in [str(v) for v in d.values]:
        raise ConfigError(f"sweep {sweep.name!r}: training_free.apply_to={tf.apply_to!r} must be one grid value of `space`, "
                          "e.g. model_preset=llava")
    model = sweep.stage_config(sweep.stages[-1], [tf.apply_to]).model
    for variant in tf.variants:
        if not variant.split() or not all(o.startswith(("model.", "model_preset=")) for o in variant.split()):
            raise ConfigError(f"sweep {sweep.name!r}: training_free variant {variant!r} must change the model only "
                              "(model_preset=NAME or model.KEY=VALUE, several separated by spaces)")
        try:
            apply_model_overrides(model, [o.removeprefix("model.") for o in variant.split()])
        except Exception as exn:  # OmegaConf's errors and ValueError: a bad key or value
            raise ConfigError(f"sweep {sweep.name!r}: training_free variant {variant!r}: {first_line(exn)}") from exn


def _check_objective(sweep: SweepConfig) -> None:
    """A benchmark objective (`textvqa/accuracy`) needs that benchmark scored by the last stage."""
    from eelight.eval.registry import BENCHMARKS

    bench = sweep.objective.metric.split("/")[0]
    if bench not in BENCHMARKS:
        return
    last = sweep.stages[-1]
    cfg = sweep.stage_config(last)
    if bench not in cfg.eval.benchmarks:
        raise ConfigError(f"sweep objective {sweep.objective.metric!r} needs benchmark {bench!r} scored after the "
                          f"{last} stage; add eval.benchmarks=[{','.join([*cfg.eval.benchmarks, bench])}] to "
                          f"`overrides` (and eval.data_root= where its files are)")


def data_fingerprint(sweep: SweepConfig) -> str | None:
    """Fingerprint of the training data the trials read: the `probe.json` and `index.json` beside
    each stage's training shards (what regenerating or re-indexing a dataset rewrites). None
    when no such file exists (remote shards, shards never indexed): nothing to compare."""
    import hashlib
    from pathlib import Path

    h, seen = hashlib.sha256(), False
    for stage in sweep.stages:
        cfg = sweep.stage_config(stage)
        folder = Path(cfg.data.train_shards).parent
        for name in ("probe.json", "index.json"):
            if (folder / name).is_file():
                h.update(f"{stage}:{name}:".encode() + (folder / name).read_bytes())
                seen = True
    return h.hexdigest()[:16] if seen else None


def _with_base(path: str, depth: int = 0) -> Any:
    """The sweep file as a YAML node, on top of the file its `base:` names (relative to it), if
    any: every key replaces the base's, except `overrides`, which are added after the base's
    (a dot-list: the later value wins)."""
    from omegaconf import OmegaConf

    node = load_yaml(path)
    if not OmegaConf.is_dict(node) or "base" not in node:
        return node
    base = str(Path(path).parent / str(node.pop("base")))
    if depth > 8:
        raise ConfigError(f"sweep file {path}: `base:` files name each other in a loop")
    if not Path(base).is_file():
        raise ConfigError(f"sweep file {path}: its base {base} does not exist; fix `base:`")
    parent = _with_base(base, depth + 1)
    extra = list(node.pop("overrides", []) or [])
    merged = OmegaConf.merge(parent, node)
    merged.overrides = list(parent.get("overrides", []) or []) + extra
    return merged


def load_sweep(path: str, extra_overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Load and validate a sweep file; `extra_overrides` apply to every trial."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(SweepConfig), _with_base(path))
        sweep = OmegaConf.to_object(merged)
    except FileNotFoundError as exn:
        raise ConfigError(f"sweep file not found: {path}") from exn
    except OmegaConfBaseException as exn:
        key = getattr(exn, "full_key", None)
        raise ConfigError(f"sweep file {path}: bad key {key!r}: {first_line(exn)}" if key
                          else f"sweep file {path}: {first_line(exn)}") from exn
    assert isinstance(sweep, SweepConfig)
    sweep.overrides = list(sweep.overrides) + list(extra_overrides)
    # the command line's overrides win over a stage's own too (`make sweep ARGS=trainer.max_steps=5`)
    sweep.stage_overrides = {k: list(v) + list(extra_overrides) for k, v in sweep.stage_overrides.items()}
    try:
        _check(sweep)
    except ConfigError as exn:
        if str(path) in str(exn):
            raise
        raise ConfigError(f"sweep file {path}: {exn}") from exn
    return sweep
