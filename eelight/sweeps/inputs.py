"""What a sweep's trials will read, checked before any trial runs.

A trial opens its backbones when it starts, its shards when it trains and its benchmark files
only after training, so a wrong `eval.data_root` used to cost a whole trial per worker (at real
scale, hours of GPU time) and then fail every other trial the same way. `missing_inputs` resolves
each stage's run config for every variant of the grid and lists, for each local path a trial
needs, the ones that are not there: backbone folders (`config.json`), the tokenizer, every
training and validation shard, the `index.json` keys that `data.subset` takes (enough samples
for the largest data size), an `init_from` checkpoint, and the files and image folders of the
benchmarks the stage scores. Remote shards (`pipe:`, `http(s)://`, `s3://`, `gs://`) are not
checked. `eelight sweep FILE --check` prints the plan and these checks without running anything.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from eelight.errors import ConfigError
from eelight.sweeps.config import SweepConfig
from eelight.training.config import RunConfig
from eelight.training.stages import STAGE_TABLE

REMOTE = ("pipe:", "http://", "https://", "gs://", "s3://")


def stage_configs(sweep: SweepConfig) -> list[tuple[str, RunConfig]]:
    """(stage, run config) for every stage and every variant of the grid's
    non-seed axes, at the largest data size: what the trials of the sweep run."""
    grid = {k: list(d.values) for k, d in sweep.space.items() if d.type == "grid"}
    size = max(sweep.data_sizes) if sweep.data_sizes else None
    out = []
    for combo in itertools.product(*grid.values()):
        variant = dict(zip(grid, combo, strict=True))
        point = [f"{k}={v}" for k, v in variant.items()] + ([f"data.subset={size}"] if size else [])
        for stage in sweep.stages:
            cfg = sweep.stage_config(stage, point)
            out.append((stage, cfg))
    return out


def _folder(key: str, path: str | None, marker: str | None) -> str | None:
    if path is None:
        return None
    p = Path(path)
    if marker and not (p / marker).is_file():
        return f"{key}={path} (no {marker} there)"
    return None if p.exists() else f"{key}={path} (does not exist)"


def _shards(pattern: str | None) -> list[str]:
    from eelight.data.loader import expand_urls

    if not pattern or pattern.startswith(REMOTE):
        return []
    try:
        expand_urls(pattern)
    except Exception as exn:  # noqa: BLE001 - a missing shard or a folder in the list: named by the loader
        return [str(exn)]
    return []


def _subset(cfg: RunConfig) -> list[str]:
    from eelight.data.loader import expand_urls, subset_keys

    if cfg.data.subset is None or cfg.data.train_shards.startswith(REMOTE):
        return []
    try:
        subset_keys(expand_urls(cfg.data.train_shards), cfg.data.subset)
    except Exception as exn:  # noqa: BLE001 - no index.json, or too few samples in it
        return [str(exn)]
    return []


def _benchmarks(cfg: RunConfig) -> list[str]:
    from eelight.eval.registry import DEFAULT_FILES

    missing = []
    for name in cfg.eval.benchmarks:
        files = getattr(cfg.eval, name)
        if name == "probe":
            missing += _shards(files.file or cfg.data.val_shards)
            continue
        default_file, default_images = DEFAULT_FILES[name]
        root = Path(cfg.eval.data_root)
        file = files.file or str(root / default_file)
        if not Path(file).is_file():
            missing.append(f"{name} questions {file} (set eval.data_root= or eval.{name}.file=)")
        images = files.images or (str(root / default_images) if default_images else None)
        if images and not Path(images).is_dir():
            missing.append(f"{name} images {images} (set eval.{name}.images=)")
    return missing


def missing_inputs(sweep: SweepConfig) -> list[str]:
    """Every local input some trial of the sweep needs and will not find, each named once with
    the stages that read it."""
    stages: dict[str, list[str]] = {}
    for stage, cfg in stage_configs(sweep):
        train_shards = _shards(cfg.data.train_shards)
        found = [
            _folder("model.llm.path", cfg.model.llm.path, "config.json"),
            _folder("model.vision.path", cfg.model.vision.path, "config.json"),
            _folder("data.tokenizer", cfg.data.tokenizer, None),
            _folder("init_from", cfg.init_from, None) if stage == sweep.stages[0] else None,
            *train_shards,
            *_shards(cfg.data.val_shards),
            *([] if train_shards else _subset(cfg)),  # the subset's keys only of shards that are there
            *(_benchmarks(cfg) if STAGE_TABLE[stage].scores_benchmarks else []),  # only such a stage scores them
        ]
        for m in filter(None, found):
            stages.setdefault(m, [])
            if stage not in stages[m]:
                stages[m].append(stage)
    return [f"{m} [{', '.join(s)}]" for m, s in stages.items()]


def check_inputs(sweep: SweepConfig, before: str) -> None:
    """Raise one line naming every missing input (`before`: what was not started because of it)."""
    missing = missing_inputs(sweep)
    if missing:
        raise ConfigError(f"sweep {sweep.name}: {len(missing)} input(s) that trials read are missing{before}: "
                          f"{'; '.join(missing)}. Fix the paths in the experiment YAML or pass key=value overrides")


def plan(sweep: SweepConfig) -> str:
    """What the sweep runs, as text: trials, and per stage the inputs and budget of its first variant."""
    points = sweep.grid_points()
    lines = [f"sweep {sweep.name}: {len(points)} trials = {' x '.join(f'{len(v)} {k}' for k, v in sweep.grid_axes().items())}"
             f"{f' x {sweep.trials_per_point} repeats' if sweep.trials_per_point > 1 else ''}; "
             f"objective {sweep.objective.metric} ({sweep.objective.direction})"]
    seen = set()
    for stage, cfg in stage_configs(sweep):
        if stage in seen:
            continue
        seen.add(stage)
        d, t = cfg.data, cfg.trainer
        lines.append(f"  {stage}: {t.max_steps} steps x batch {d.batch_size} x {t.devices * t.num_nodes} devices "
                     f"({t.accelerator}, {t.strategy}, {t.precision}); llm {cfg.model.llm.path}; vision "
                     f"{cfg.model.vision.path}; shards {d.train_shards}"
                     f"{'; subset up to ' + str(d.subset) if d.subset else ''}; "
                     f"scores {list(cfg.eval.benchmarks) if stage == 'instruct' else 'nothing'}")
    return "\n".join(lines)
