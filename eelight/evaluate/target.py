"""What `eelight eval` scores: a training run's folder (its `config.yaml` + newest checkpoint)
or an exported folder (`model.safetensors`), optionally with the model variant changed
(`model.visual_attn=none` or `model_preset=ee_mllm_f` on a LLaVA checkpoint is EE-MLLM-F:
the same weights evaluated with composite attention)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eelight.errors import ConfigError, first_line
from eelight.eval.config import EvalConfig

SHORTV_FILE = "shortv.json"  # a run's ShortV calibration (`eelight shortv`, evaluate/shortv.py)


@dataclass
class Target:
    model: Any
    tokenizer: Any
    processor: Any
    template: str
    placement: str
    eval: EvalConfig
    label: str  # what was evaluated, for tables and run names
    variant_overrides: list[str] = field(default_factory=list)  # model.* changed from the trained model
    variant_label: str = ""  # those changes as the user wrote them
    run_dir: Path | None = None  # a training run's folder
    run_cfg: Any = None  # its RunConfig
    step: int = 0
    system_prompt: str | None = None  # data.template=auto's system turn, as trained


def split_overrides(items: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(model overrides, eval overrides, other run-config overrides); `benchmarks=` is short for
    `eval.benchmarks=`, and `model_preset=X` becomes X's variant fields."""
    from eelight.models.config import preset_overrides

    model, evals, other = [], [], []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{item!r} is not key=value (eelight eval TARGET [key=value ...])")
        key, value = item.split("=", 1)
        if key == "benchmarks":
            evals.append(f"eval.benchmarks={value}")
        elif key.startswith("eval."):
            evals.append(item)
        elif key == "model_preset":
            try:
                model += [f"model.{o}" for o in preset_overrides(value)]
            except ValueError as exn:
                raise ConfigError(str(exn)) from exn
        elif key.startswith("model."):
            model.append(item)
        else:
            other.append(item)
    return model, evals, other


def _eval_config(base: EvalConfig | None, overrides: list[str]) -> EvalConfig:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(base or EvalConfig()),
                                 OmegaConf.from_dotlist([o.removeprefix("eval.") for o in overrides]))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exn:
        raise ConfigError(f"bad eval key {getattr(exn, 'full_key', '')!r}: {first_line(exn)}") from exn


def load_target(path: str, items: list[str]) -> Target:
    folder = Path(path)
    model_over, eval_over, other = split_overrides(items)
    label = " ".join(i for i in items if i.startswith(("model.", "model_preset=")))
    if folder.is_file() and folder.suffix == ".ckpt":
        folder = folder.parent
    target = None
    if (folder / "model.safetensors").is_file():
        target = _load_export(folder, model_over, eval_over, other)
    elif (folder / "config.yaml").is_file():
        target = _load_run(folder, model_over, eval_over, other)
    if target is not None:
        target.variant_label = label
        return target
    raise ConfigError(f"{path} is neither a training run folder (config.yaml + last.ckpt) nor an eelight export "
                      "(model.safetensors); pass runs/<name>/<stage> or an exported folder")


def _load_run(folder: Path, model_over: list[str], eval_over: list[str], other: list[str]) -> Target:
    from eelight.data.tokenizer import load_tokenizer
    from eelight.models.vision import image_processor
    from eelight.training.config import read_run_config
    from eelight.training.distributed import checkpoint_step
    from eelight.training.recipe import load_trained
    from eelight.training.run import resume_checkpoint

    ckpt = resume_checkpoint(folder)
    if ckpt is None:
        raise ConfigError(f"{folder} has no last.ckpt: train the stage first (or pass an exported folder)")
    cfg = read_run_config(folder / "config.yaml", model_over + other)
    if cfg.model.kv_only_layers == "auto":
        cfg.model.kv_only_layers = calibrated_layers(folder)
    try:
        model = load_trained(cfg, ckpt)  # a LoRA run's adapters merged
    except ValueError as exn:
        raise ConfigError(f"{exn} (model overrides: {' '.join(model_over) or 'none'})") from exn
    model.compile_decoder()
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    return Target(model.eval(), tokenizer, image_processor(cfg.model.vision, model.vision.image_size),
                  cfg.data.template, cfg.data.image_placement, _eval_config(cfg.eval, eval_over),
                  label=f"{cfg.name}/{cfg.stage}", variant_overrides=model_over, run_dir=folder, run_cfg=cfg,
                  step=checkpoint_step(ckpt), system_prompt=cfg.data.system_prompt)


def calibrated_layers(run_dir: Path) -> str:
    """`model.kv_only_layers=auto` (ShortV) on a run folder: the layers its calibration chose."""
    path = run_dir / SHORTV_FILE
    if not path.is_file():
        raise ConfigError(f"model.kv_only_layers=auto (ShortV) needs {path}: run `eelight shortv {run_dir}` first")
    try:
        return str(json.loads(path.read_text())["kv_only_layers"])
    except (ValueError, KeyError, TypeError) as exn:
        raise ConfigError(f"{path} is not a ShortV calibration record; rerun `eelight shortv {run_dir}`") from exn


def _load_export(folder: Path, model_over: list[str], eval_over: list[str], other: list[str]) -> Target:
    from transformers import AutoTokenizer

    from eelight.export import load
    from eelight.models.vision import image_processor

    if other:
        raise ConfigError(f"{' '.join(other)}: an exported folder takes only model.*, model_preset and eval.* "
                          "overrides")
    try:
        model = load(folder, [o.removeprefix("model.") for o in model_over])
    except ValueError as exn:
        raise ConfigError(str(exn)) from exn
    model.compile_decoder()
    prompting = json.loads((folder / "prompt.json").read_text()) if (folder / "prompt.json").exists() else {}
    return Target(model, AutoTokenizer.from_pretrained(str(folder)),
                  image_processor(model.cfg.vision, model.vision.image_size, folder),
                  prompting.get("template", "probe"), prompting.get("image_placement", "marker"),
                  _eval_config(None, eval_over), label=folder.name, variant_overrides=model_over,
                  system_prompt=prompting.get("system_prompt"))
