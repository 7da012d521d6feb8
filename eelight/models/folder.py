"""A model as a folder and back: `save_model` writes what `load_model` needs, and
`eelight.export` adds the tokenizer, image processor and prompting to make an export.

    model.safetensors    every tensor (a tied LM head once)
    config.yaml          the model config, sizes resolved, no local paths
    vision_config.json   the tower's `transformers` config
"""

from __future__ import annotations

import json
from pathlib import Path

from eelight.errors import CheckpointError
from eelight.models import hf_loading
from eelight.models.config import ModelConfig, portable_config
from eelight.models.mllm import MLLM
from eelight.models.overrides import apply_model_overrides
from eelight.models.vision import image_processor


def save_model(model: MLLM, folder: str | Path) -> Path:
    """Write `model.safetensors`, `config.yaml` and `vision_config.json` into `folder`."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.cfg.llm.tie_embeddings:
        state.pop("decoder.lm_head.weight")  # safetensors refuses shared tensors; re-tied on load
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(portable_config(model.cfg))))
    (folder / "vision_config.json").write_text(json.dumps(model.vision.hf_config_dict(), indent=2))
    return folder


def load_model(folder: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> MLLM:
    """The model `save_model` wrote, in eval mode on the CPU, loaded strictly. `overrides`:
    model-config changes that keep the parameters (`visual_attn=none` or `model_preset=ee_mllm_f`:
    EE-MLLM-F), applied as everywhere (`apply_model_overrides`)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} is not an eelight export (no model.safetensors)")
    try:
        saved = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig),
                                                    OmegaConf.load(folder / "config.yaml")))
        cfg = apply_model_overrides(saved, overrides)
    except (OmegaConfBaseException, ValueError) as exn:
        raise CheckpointError(f"{folder}: model overrides {list(overrides)}: {str(exn).splitlines()[0]}") from exn
    vision_hf = hf_loading.read_vision_config(folder, "vision_config.json")
    processor = image_processor(cfg.vision, cfg.vision.image_size, folder)  # the export's own
    model = MLLM(cfg, cfg.llm, vision_hf, processor)
    hf_loading.load_strict(model, load_file(folder / "model.safetensors"),
                           f"{folder}/model.safetensors (against its config.yaml)")
    return model.eval()
