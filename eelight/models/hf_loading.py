"""Strict loading of local Hugging Face checkpoint folders. Nothing is downloaded.

- LLM folders (Llama / Vicuna, Mistral, Qwen2, Qwen3): `config.json` + `model.safetensors`
  or a sharded `model.safetensors.index.json`.
- Vision folders: CLIP / SigLIP, either a vision-only model or a full
  image-text model (its text half is skipped by name).
- LLaVA folders (`LlavaForConditionalGeneration`): vision tower + projector + LLM.

Every checkpoint key goes through a templated key map; a key that no rule maps
(and no rule explicitly skips), a key of ours that the checkpoint lacks, or a
tensor of the wrong shape raises an error that names the key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eelight.errors import CheckpointError, one_line
from eelight.models.config import LLMConfig, ModelConfig, VisionConfig
from eelight.models.vision import FUSED, FusedVisionConfig, tower_kind

LLM_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")

# (HF key regex, our key template). Our decoder's names follow HF Llama minus `model.`.
_LLAMA_RULES = [
    (r"model\.embed_tokens\.weight", "embed_tokens.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.weight", r"layers.\1.self_attn.\2_proj.weight"),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", r"layers.\1.mlp.\2_proj.weight"),
    (r"model\.layers\.(\d+)\.(input|post_attention)_layernorm\.weight", r"layers.\1.\2_layernorm.weight"),
    (r"model\.norm\.weight", "norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
]
LLM_KEY_RULES: dict[str, list[tuple[str, str]]] = {
    "llama": _LLAMA_RULES,
    "mistral": _LLAMA_RULES,
    "qwen2": _LLAMA_RULES
    + [(r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.bias", r"layers.\1.self_attn.\2_proj.bias")],
    # Qwen3: an RMSNorm over each head's queries and keys (head_dim wide), before RoPE.
    "qwen3": _LLAMA_RULES + [(r"model\.layers\.(\d+)\.self_attn\.([qk])_norm\.weight", r"layers.\1.self_attn.\2_norm.weight")],
}
# Buffers some older checkpoints carry; recomputed here from the config.
LLM_SKIP = [r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"]
# The text half of a full CLIP / SigLIP checkpoint.
VISION_SKIP = [r"text_model\..*", r"text_projection\..*", r"visual_projection\..*", r"logit_(scale|bias)",
               r"classifier\..*"]  # and a DINOv2 classifier's head


def read_config(folder: str | Path, name: str = "config.json") -> dict[str, Any]:
    path = Path(folder) / name
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: a Hugging Face checkpoint folder needs {name} (check the path; "
            "the tiny probe backbones are built by `eelight backbones`)"
        )
    try:
        hf = json.loads(path.read_text())
    except ValueError as exn:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"{path} is not valid JSON ({one_line(exn)[:120]}); re-save the model with "
                              "save_pretrained") from exn
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path} holds a {type(hf).__name__}, not a config object; re-save the model")
    return hf


def _from_config(folder: str | Path, parse: Any, name: str = "config.json") -> Any:
    """`parse(config.json)`, with anything the file gets wrong named in one line."""
    path = Path(folder) / name
    try:
        return parse(read_config(folder, name))
    except CheckpointError as exn:
        if str(path) in str(exn):
            raise
        raise CheckpointError(f"{path}: {exn}") from exn
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exn:
        raise CheckpointError(f"{path} is not a usable Hugging Face config ({type(exn).__name__}: "
                              f"{one_line(exn)[:160]}); re-save the model with save_pretrained") from exn


def read_safetensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder: `model.safetensors` or the shards its index names."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for name in files:
            if not (folder / name).is_file():
                raise CheckpointError(f"{folder / name} is listed in {index.name} but missing")
            state.update(_load_safetensors(folder / name))
        return state
    single = folder / "model.safetensors"
    if single.is_file():
        return _load_safetensors(single)
    raise CheckpointError(
        f"no model.safetensors or model.safetensors.index.json in {folder}; re-save the model "
        "with transformers' save_pretrained(..., safe_serialization=True)"
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as exn:  # noqa: BLE001 - SafetensorError, OSError, MemoryError...: a broken file
        raise CheckpointError(f"{path} cannot be read as safetensors ({one_line(exn)[:160]}): truncated or "
                              "not a weights file; re-save the model with save_pretrained") from exn


def map_keys(
    state: dict[str, torch.Tensor], rules: list[tuple[str, str]], skip: list[str], source: str
) -> dict[str, torch.Tensor]:
    """Checkpoint keys -> our keys by the first rule that fully matches, after dropping the
    keys `skip` names; raises on a key that no rule maps."""
    compiled = [(re.compile(pattern), template) for pattern, template in rules]
    skipped = [re.compile(pattern) for pattern in skip]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if any(s.fullmatch(key) for s in skipped):
            continue
        for pattern, template in compiled:
            if pattern.fullmatch(key):
                out[pattern.sub(template, key)] = tensor
                break
        else:
            raise CheckpointError(f"unexpected tensor {key!r} in {source}: no key-map rule for it")
    return out


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str, new: list[str] = ()) -> None:
    """Load `state` into `module`; every tensor of the module except `new` must be present
    with its exact shape, and `state` must hold nothing else."""
    own = module.state_dict()
    tied = _tied_aliases(module)
    for key, tensor in state.items():
        if key not in own or key in new:
            raise CheckpointError(f"unexpected tensor {key!r} in {source}: the model has no such parameter")
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"tensor {key!r} in {source} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(own[key].shape)}: the folder's config.json does not match its weights"
            )
    missing = [k for k in own if k not in state and k not in new and k not in tied]
    if missing:
        raise CheckpointError(f"tensor {missing[0]!r} is missing from {source} ({len(missing)} missing)")
    module.load_state_dict(state, strict=False)


def _tied_aliases(module: nn.Module) -> set[str]:
    """Names of parameters that are a second name for an earlier one (tied LM head)."""
    seen: set[int] = set()
    aliases = set()
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            aliases.add(name)
        seen.add(id(param))
    return aliases


def llm_config_from_hf(hf: dict[str, Any], path: str | None = None) -> tuple[LLMConfig, str]:
    """Our LLMConfig (and the family name) from an HF `config.json` dict."""
    family = hf.get("model_type")
    if family not in LLM_FAMILIES:
        raise CheckpointError(
            f"LLM model_type {family!r} is not supported; supported families are {list(LLM_FAMILIES)}"
        )
    if family != "qwen2" and hf.get("attention_bias"):
        raise CheckpointError(f"{family} checkpoints with attention_bias=true are not supported")
    if hf.get("use_sliding_window"):
        raise CheckpointError(f"{family} checkpoints with use_sliding_window=true are not supported (full attention only)")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
        raise CheckpointError(f"rope scaling {rope_type!r} is not supported; supported: default, linear, llama3")
    heads = hf["num_attention_heads"]
    cfg = LLMConfig(
        path=path,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim"),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        max_positions=hf.get("max_position_embeddings", 2048),
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        rope_type=rope_type,
        rope_factor=rope.get("factor", 1.0),
        rope_low_freq_factor=rope.get("low_freq_factor", 1.0),
        rope_high_freq_factor=rope.get("high_freq_factor", 4.0),
        rope_original_max_positions=rope.get("original_max_position_embeddings", 8192),
        qkv_bias=family == "qwen2",
        qk_norm=family == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    return cfg, family


def read_vision_config(folder: str | Path, name: str = "config.json") -> Any:
    """A folder's vision config (an export's `vision_config.json`), its faults named in one line."""
    return _from_config(folder, vision_config_from_hf, name)


def vision_config_from_hf(hf: dict[str, Any]) -> Any:
    """The `transformers` vision config of a CLIP / SigLIP (vision or full) or DINOv2 (with or
    without registers) config dict; a saved fused tower's dict gives a `FusedVisionConfig`."""
    from transformers import CLIPVisionConfig, Dinov2Config, Dinov2WithRegistersConfig, SiglipVisionConfig

    kind = hf.get("model_type")
    if kind == FUSED:
        dino, siglip = (vision_config_from_hf(t) for t in hf["towers"])
        return FusedVisionConfig(dino, siglip)
    if kind in ("clip", "siglip"):
        hf, kind = hf["vision_config"], f"{kind}_vision_model"
    classes = {"clip_vision_model": CLIPVisionConfig, "siglip_vision_model": SiglipVisionConfig,
               "dinov2": Dinov2Config, "dinov2_with_registers": Dinov2WithRegistersConfig}
    if kind not in classes:
        raise CheckpointError(f"vision model_type {kind!r} is not supported; use a CLIP, SigLIP or DINOv2 folder")
    return classes[kind](**hf)


def resolve_llm(cfg: LLMConfig) -> tuple[LLMConfig, str]:
    """The sizes from `cfg.path/config.json` when a path is set, else `cfg` itself."""
    if not cfg.path:
        return cfg, "llama"
    return _from_config(cfg.path, lambda hf: llm_config_from_hf(hf, cfg.path))


@dataclass(frozen=True)
class ResolvedModel:
    """A model config as it will be built, its folders' config.json read once: `cfg` has the
    sizes as trained (paths kept), `family` names the LLM's key map, `vision_hf` is the tower's
    `transformers` config (the folder's own, or one made from `cfg.vision`)."""

    cfg: ModelConfig
    family: str
    vision_hf: Any


def resolve(cfg: ModelConfig | ResolvedModel) -> ResolvedModel:
    """Read each backbone folder's config.json once (a `ResolvedModel` is returned as is)."""
    from eelight.models.vision import vision_hf_config

    if isinstance(cfg, ResolvedModel):
        return cfg
    llm, family = resolve_llm(cfg.llm)
    vision = cfg.vision
    if not vision.path:
        return ResolvedModel(replace(cfg, llm=llm), family, vision_hf_config(vision))
    vision_hf = _from_config(vision.path, vision_config_from_hf)
    expected = "dinov2" if vision.kind == FUSED else vision.kind
    if tower_kind(vision_hf) != expected:
        raise CheckpointError(f"{vision.path} holds a {vision_hf.model_type!r} tower but model.vision.kind="
                              f"{vision.kind} wants {expected}; set model.vision.kind={tower_kind(vision_hf)}")
    vision = _vision_sizes(vision, vision_hf)
    if vision.kind == FUSED:
        siglip = _from_config(vision.siglip_path, vision_config_from_hf)
        if tower_kind(siglip) != "siglip":
            raise CheckpointError(f"model.vision.siglip_path={vision.siglip_path} holds a {siglip.model_type!r} "
                                  "tower, not a SigLIP one")
        vision_hf = FusedVisionConfig(vision_hf, siglip)
    return ResolvedModel(replace(cfg, llm=llm, vision=vision), family, vision_hf)


def resolve_model(cfg: ModelConfig) -> ModelConfig:
    """The config as it will be trained: the LLM's and the vision tower's sizes read from their
    folders' config.json (paths kept), so params and the saved config.yaml tell the truth."""
    return resolve(cfg).cfg


def _vision_sizes(vision: Any, hf: Any) -> Any:
    """The folder's sizes (kind=dinosiglip: its DINOv2 tower's). DINOv2 runs at its processor's
    crop size when the folder has one (its config's image_size is the pretraining size)."""
    from eelight.models.vision import image_processor

    kind = tower_kind(hf)
    size, intermediate = hf.image_size, getattr(hf, "intermediate_size", None)
    if kind == "dinov2":
        intermediate = int(hf.hidden_size * hf.mlp_ratio)
        if (Path(vision.path) / "preprocessor_config.json").is_file():
            size = image_processor(replace(vision, kind="dinov2", siglip_path=None), size).crop_size["height"]
    return replace(vision, kind=FUSED if vision.kind == FUSED else kind, image_size=size, patch_size=hf.patch_size,
                   hidden_size=hf.hidden_size, intermediate_size=intermediate, num_layers=hf.num_hidden_layers,
                   num_heads=hf.num_attention_heads, registers=int(getattr(hf, "num_register_tokens", 0) or 0))


def load_llm_weights(decoder: nn.Module, folder: str, family: str) -> None:
    source = f"LLM checkpoint {folder}"
    state = map_keys(read_safetensors(folder), LLM_KEY_RULES[family], LLM_SKIP, source)
    load_strict(decoder, state, source, decoder.new_parameter_names())


# DINOv2 checkpoints (the hub's, and what transformers 5 still writes) name attention as
# `attention.attention.{query,key,value}` and `attention.output.dense`; the modules are q/k/v/o_proj.
_DINO_ATTENTION = [(rf"(?:dinov2\.)?encoder\.layer\.(\d+)\.attention\.{old}\.(weight|bias)",
                    rf"encoder.layer.\1.attention.{new}_proj.\2")
                   for old, new in (("attention.query", "q"), ("attention.key", "k"), ("attention.value", "v"),
                                    ("output.dense", "o"))]


def _vision_rules(kind: str) -> list[tuple[str, str]]:
    # Vision-only folders keep HF's own names; older ones nest them under `vision_model.`,
    # DINOv2 classification checkpoints under `dinov2.`.
    return (_DINO_ATTENTION if kind == "dinov2" else []) + [(r"(?:vision_model\.|dinov2\.)?(.+)", r"\1")]


def load_vision_weights(tower: nn.Module, vision: VisionConfig) -> None:
    """The tower's weights from `vision.path` (kind=dinosiglip: and `vision.siglip_path`)."""
    parts = [(tower.dino, vision.path), (tower.siglip, vision.siglip_path)] if vision.kind == FUSED else [
        (tower, vision.path)]
    for part, folder in parts:
        source = f"vision checkpoint {folder}"
        state = map_keys(read_safetensors(folder), _vision_rules(part.kind), VISION_SKIP, source)
        load_strict(part.model, state, source)


def llava_model_config(folder: str, preset: ModelConfig) -> tuple[ModelConfig, Any]:
    """Our config for a `transformers` LLaVA folder: the preset's variant, the folder's sizes."""
    hf = read_config(folder)
    if hf.get("model_type") != "llava":
        raise CheckpointError(f"{folder} is a {hf.get('model_type')!r} checkpoint, not a LLaVA one")
    if hf.get("projector_hidden_act", "gelu") != "gelu" or not hf.get("multimodal_projector_bias", True):
        raise CheckpointError(f"{folder}: only LLaVA-1.5's mlp2x_gelu projector (with biases) is supported")
    layer = hf.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise CheckpointError(f"{folder}: vision_feature_layer={layer} (several layers) is not supported")
    llm, _ = llm_config_from_hf(hf["text_config"], folder)
    vision_hf = vision_config_from_hf(hf["vision_config"])
    kind = tower_kind(vision_hf)
    select = "full" if hf.get("vision_feature_select_strategy") == "full" else "patch"
    vision = VisionConfig(path=None, kind=kind, feature_layer=layer, feature_select=select)
    return replace(preset, llm=llm, vision=vision, projector_depth=2), vision_hf


def llava_key_rules(family: str) -> list[tuple[str, str]]:
    """LLaVA keys, in both the legacy (`language_model.model.`) and the
    transformers-5 (`model.language_model.`) layouts, to our MLLM's keys."""
    rules = [
        (r"(?:model\.)?vision_tower\.(?:vision_model\.)?(.+)", r"vision.model.\1"),
        (r"(?:model\.)?multi_modal_projector\.linear_1\.(weight|bias)", r"projector.net.0.\1"),
        (r"(?:model\.)?multi_modal_projector\.linear_2\.(weight|bias)", r"projector.net.2.\1"),
    ]
    for pattern, template in LLM_KEY_RULES[family]:
        body = pattern.removeprefix(r"model\.")
        if pattern.startswith(r"model\."):
            hf = rf"(?:language_model\.model\.|model\.language_model\.){body}"
        else:  # lm_head
            hf = rf"(?:language_model\.)?{body}"
        rules.append((hf, "decoder." + template))  # the prefix groups do not capture
    return rules


def load_llava_weights(model: nn.Module, folder: str) -> None:
    source = f"LLaVA checkpoint {folder}"
    _, family = llm_config_from_hf(read_config(folder)["text_config"])
    state = map_keys(read_safetensors(folder), llava_key_rules(family), LLM_SKIP, source)
    new = ["decoder." + n for n in model.decoder.new_parameter_names()]
    load_strict(model, state, source, new)
