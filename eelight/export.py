"""Export a trained model to a self-contained folder, load it back in one call, and
register it in the MLflow model registry.

    exported/
      model.safetensors       every tensor of the model
      config.yaml             the model config (LLM and vision sizes resolved, no paths)
      vision_config.json      the `transformers` vision-tower config
      tokenizer files         tokenizer.json, tokenizer_config.json, ...
      preprocessor_config.json  the image processor
      prompt.json             how it was prompted in training: chat template, image placement
      README.md               model card: variant, metrics, data it saw
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from eelight.errors import CheckpointError
from eelight.models.config import ModelConfig


def export_model(run_cfg_path: str | Path, checkpoint: str | Path, out: str | Path,
                 card: dict[str, Any] | None = None) -> Path:
    """Write the folder from a run's saved `config.yaml` and its Lightning checkpoint."""
    from omegaconf import OmegaConf

    from eelight.data.tokenizer import load_tokenizer
    from eelight.models.mllm import build_mllm
    from eelight.models.vision import image_processor
    from eelight.training.checkpoint import init_from_checkpoint
    from eelight.training.config import RunConfig

    run_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(run_cfg_path)))
    model = build_mllm(run_cfg.model)
    init_from_checkpoint(model, checkpoint)
    prompting = {"template": run_cfg.data.template, "image_placement": run_cfg.data.image_placement,
                 "system_prompt": run_cfg.data.system_prompt}
    out = save_export(model, out, load_tokenizer(run_cfg.data.tokenizer),
                      image_processor(run_cfg.model.vision, model.vision.image_size), prompting)
    _model_card(out, _portable(model.cfg), run_cfg, card or {})
    return out


def _portable(cfg: ModelConfig) -> ModelConfig:
    """The model config without local paths (sizes stay resolved)."""
    return replace(cfg, llm=replace(cfg.llm, path=None), vision=replace(cfg.vision, path=None))


def save_export(model, out: str | Path, tokenizer, processor, prompting: dict[str, str]) -> Path:
    """Write a model and what it needs to be asked questions as an export folder (no card)."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.cfg.llm.tie_embeddings:
        state.pop("decoder.lm_head.weight")  # safetensors refuses shared tensors; re-tied on load
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(_portable(model.cfg))))
    model.vision.model.config.to_json_file(out / "vision_config.json")
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "prompt.json").write_text(json.dumps(prompting, indent=1))
    return out


def _model_card(out: Path, cfg: ModelConfig, run_cfg, card: dict[str, Any]) -> None:
    metrics = card.get("metrics", {})
    lines = [
        f"# {card.get('title', run_cfg.name)}", "",
        "An eelight model (EE-MLLM family). Load it with `eelight.load(\"<this folder>\")`.", "",
        "## Variant", "",
        f"arch={cfg.arch}, visual_attn={cfg.visual_attn}, aligner={cfg.aligner}, aligner_init={cfg.aligner_init}, "
        f"aligner_ffn={cfg.aligner_ffn}, projector_depth={cfg.projector_depth}; LLM {cfg.llm.num_layers} layers x "
        f"{cfg.llm.hidden_size}, vision tower {cfg.vision.kind}.", "",
        "## Metrics", "", *(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items()),
        "", "## Data", "",
        f"- training shards: `{run_cfg.data.train_shards}`"
        + (f", first {run_cfg.data.subset} samples" if run_cfg.data.subset else ""),
        f"- template: {run_cfg.data.template}, image placement {run_cfg.data.image_placement}, "
        f"max length {run_cfg.data.max_length}",
        f"- stages: {card.get('stages', run_cfg.stage)}, seed {run_cfg.seed}",
        *([f"- source: {card['source']}"] if "source" in card else []), "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def load(folder: str | Path, overrides: list[str] | tuple[str, ...] = ()):
    """Rebuild an exported model in one call (eval mode, CPU). `overrides`: model-config
    dot-list changes that keep the parameters (e.g. `visual_attn=none`: EE-MLLM-F)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from eelight.models.hf_loading import load_strict
    from eelight.models.mllm import MLLM

    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} is not an eelight export (no model.safetensors)")
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig),
                                                  OmegaConf.load(folder / "config.yaml"),
                                                  OmegaConf.from_dotlist(list(overrides))))
    except (OmegaConfBaseException, ValueError) as exn:
        raise CheckpointError(f"{folder}: model overrides {list(overrides)}: {str(exn).splitlines()[0]}") from exn
    vision_config = AutoConfig.from_pretrained(folder / "vision_config.json")
    model = MLLM(cfg, cfg.llm, vision_config)
    load_strict(model, load_file(folder / "model.safetensors"), f"{folder}/model.safetensors (against its config.yaml)")
    return model.eval()


def register(folder: str | Path, name: str, tracking_uri: str, run_id: str) -> Any:
    """Register the folder in the MLflow model registry as a pyfunc model (logged under `run_id`)."""
    import mlflow

    from eelight.mlflow_pyfunc import EelightModel, signature

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=EelightModel(), signature=signature(),
                                       artifacts={"model_dir": str(folder)}, pip_requirements=["eelight"])
    return mlflow.register_model(info.model_uri, name)


def best_trial_export(sweep, out: str | Path, register_as: str | None = None) -> dict[str, Any]:
    """Export the study's best trial (and optionally register it)."""
    import optuna

    from eelight.sweeps.runner import make_storage
    from eelight.training.run import mlflow_uri

    study = optuna.load_study(study_name=sweep.name, storage=make_storage(sweep))
    best = study.best_trial  # raises if no trial completed
    ckpt = Path(best.user_attrs["checkpoint"])
    card = {"title": f"{sweep.name} trial {best.number}", "metrics": {sweep.objective.metric: best.value,
            **{k: v for k, v in best.user_attrs.get("metrics", {}).items()}},
            "stages": " -> ".join(sweep.stages), "source": f"sweep {sweep.name}, params {json.dumps(best.params)}"}
    folder = export_model(ckpt.parent / "config.yaml", ckpt, out, card)
    result: dict[str, Any] = {"trial": best.number, "value": best.value, "folder": str(folder)}
    if register_as:
        from eelight.training.config import load_run_config

        uri, _ = mlflow_uri(load_run_config(sweep.experiment, sweep.overrides))
        version = register(folder, register_as, uri, best.user_attrs["mlflow_run_id"])
        result["registered"] = {"name": register_as, "version": version.version}
    return result
