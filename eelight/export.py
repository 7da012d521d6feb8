"""Export a trained model to a self-contained folder, load it back in one call, export a
study's best trial (registering it in MLflow's model registry: `eelight.tracking`).

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
from pathlib import Path
from typing import Any

from eelight.models.config import ModelConfig, portable_config

FORMATS = ("eelight", "hf")


def export_model(run_cfg_path: str | Path, checkpoint: str | Path, out: str | Path,
                 card: dict[str, Any] | None = None, fmt: str = "eelight") -> Path:
    """Write the folder from a run's saved `config.yaml` and its Lightning checkpoint: an
    eelight folder, or (`fmt="hf"`) a `transformers` LLaVA folder (`eelight.hf_export`)."""
    from eelight.data.tokenizer import load_tokenizer
    from eelight.models.vision import image_processor
    from eelight.training.config import read_run_config
    from eelight.training.recipe import load_trained

    run_cfg = read_run_config(run_cfg_path)
    model = load_trained(run_cfg, checkpoint)  # a LoRA run's adapters merged
    prompting = {"template": run_cfg.data.template, "image_placement": run_cfg.data.image_placement,
                 "system_prompt": run_cfg.data.system_prompt}
    tokenizer, processor = load_tokenizer(run_cfg.data.tokenizer), image_processor(run_cfg.model.vision,
                                                                                  model.vision.image_size)
    if fmt == "hf":
        from eelight.hf_export import export_llava, native_problem

        if native_problem(model.cfg, prompting) is None:
            return export_llava(model.eval(), out, tokenizer, processor, prompting)
    out = save_export(model, out, tokenizer, processor, prompting)
    if fmt == "hf":
        from eelight.hf_remote import write_custom_code

        write_custom_code(out, model, tokenizer)
        card = {**(card or {}), "custom_code": True}
    _model_card(out, portable_config(model.cfg), run_cfg, card or {})
    return out


def save_export(model, out: str | Path, tokenizer, processor, prompting: dict[str, str]) -> Path:
    """Write a model (`models.folder.save_model`) and what it needs to be asked questions
    (tokenizer, image processor, prompting) as an export folder (no card)."""
    from eelight.models.folder import save_model

    out = save_model(model, out)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "prompt.json").write_text(json.dumps(prompting, indent=1))
    return out


def _model_card(out: Path, cfg: ModelConfig, run_cfg, card: dict[str, Any]) -> None:
    metrics = card.get("metrics", {})
    lines = [
        f"# {card.get('title', run_cfg.name)}", "",
        "An eelight model (EE-MLLM family). Load it with `eelight.load(\"<this folder>\")`"
        + (", or without eelight: `transformers.AutoModel.from_pretrained(\"<this folder>\", trust_remote_code=True)` "
           f"(tested with transformers {_transformers_version()})" if card.get("custom_code") else "") + ".", "",
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


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def load(folder: str | Path, overrides: list[str] | tuple[str, ...] = ()):
    """Rebuild an exported model in one call (eval mode, CPU): `models.folder.load_model`."""
    from eelight.models.folder import load_model

    return load_model(folder, overrides)
