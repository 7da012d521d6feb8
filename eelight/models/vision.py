"""Vision tower: a `transformers` CLIP, SigLIP or DINOv2 vision model, or DINOv2 and SigLIP
fused (`dinosiglip`, as prismatic-vlms' DinoSigLIP), from local HF folders (weights loaded by
`hf_loading`) or built from sizes for tiny runs.

Features are the hidden states of `feature_layer` (LLaVA: -2, the penultimate layer);
`feature_select=patch` keeps the patch tokens only: it drops CLIP's CLS token (LLaVA's
"default" strategy) and DINOv2's CLS and register tokens. SigLIP has no CLS token, so `patch`
keeps every token there. A fused tower runs both towers on the same image, each with its own
preprocessing (its pixels are the two towers' 3 channels stacked, 6 in all), and concatenates
their patch features along channels; both must give the same patch grid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eelight.models.config import VisionConfig

FUSED = "dinosiglip"


@dataclass(frozen=True)
class FusedVisionConfig:
    """kind=dinosiglip: the two towers' `transformers` configs (DINOv2 first, as in the features)."""

    dino: Any
    siglip: Any
    model_type: str = FUSED

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": FUSED, "towers": [self.dino.to_dict(), self.siglip.to_dict()]}


@dataclass(frozen=True)
class ProcessorPair:
    """kind=dinosiglip: each tower's own image processor. An export keeps the DINOv2 one as
    `preprocessor_config.json` and the SigLIP one in `siglip/`."""

    processors: tuple[Any, Any]

    def save_pretrained(self, folder: str | Path) -> None:
        self.processors[0].save_pretrained(folder)
        self.processors[1].save_pretrained(Path(folder) / "siglip")


def tower_kind(hf_config: Any) -> str:
    """clip | siglip | dinov2 | dinosiglip from a `transformers` config's model_type."""
    model_type = hf_config.model_type
    for kind in (FUSED, "siglip", "dinov2", "clip"):
        if kind in model_type:
            return kind
    raise ValueError(f"vision model_type {model_type!r} is not supported; use a CLIP, SigLIP or DINOv2 folder")


def vision_hf_config(cfg: VisionConfig) -> Any:
    """The `transformers` vision config for a tiny tower built from `cfg`'s sizes."""
    from transformers import CLIPVisionConfig, Dinov2Config, Dinov2WithRegistersConfig, SiglipVisionConfig

    sizes = dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                 image_size=cfg.image_size, patch_size=cfg.patch_size)
    if cfg.kind == FUSED:
        return FusedVisionConfig(vision_hf_config(replace(cfg, kind="dinov2", siglip_path=None)),
                                 vision_hf_config(replace(cfg, kind="siglip", siglip_path=None)))
    if cfg.kind == "dinov2":  # DINOv2's MLP width is hidden_size * mlp_ratio (an int)
        ratio, rest = divmod(cfg.intermediate_size, cfg.hidden_size)
        if rest:
            raise ValueError(f"model.vision.intermediate_size={cfg.intermediate_size} is not a multiple of "
                             f"model.vision.hidden_size={cfg.hidden_size}, as a DINOv2 tower's MLP needs")
        if cfg.registers:
            return Dinov2WithRegistersConfig(**sizes, mlp_ratio=ratio, num_register_tokens=cfg.registers)
        return Dinov2Config(**sizes, mlp_ratio=ratio)
    cls = CLIPVisionConfig if cfg.kind == "clip" else SiglipVisionConfig
    return cls(**sizes, intermediate_size=cfg.intermediate_size)


def build_tower(cfg: VisionConfig, hf_config: Any, processor: Any | None = None) -> nn.Module:
    """The tower `cfg` names: a `VisionTower`, or a `FusedTower` for kind=dinosiglip."""
    if isinstance(hf_config, FusedVisionConfig):
        return FusedTower(cfg, hf_config, processor)
    return VisionTower(cfg, hf_config, processor)


def _hf_model(kind: str, hf_config: Any) -> nn.Module:
    from transformers import CLIPVisionModel, Dinov2Model, Dinov2WithRegistersModel, SiglipVisionModel

    if kind == "dinov2":
        registers = hf_config.model_type == "dinov2_with_registers"
        return (Dinov2WithRegistersModel if registers else Dinov2Model)(hf_config)
    return (SiglipVisionModel if kind == "siglip" else CLIPVisionModel)(hf_config)


def _prefix_tokens(kind: str, hf_config: Any) -> int:
    """Tokens before the patches in the hidden states: CLIP's CLS, DINOv2's CLS and registers."""
    if kind == "dinov2":
        return 1 + int(getattr(hf_config, "num_register_tokens", 0) or 0)
    return 1 if kind == "clip" else 0


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig, hf_config: Any, processor: Any | None = None) -> None:
        super().__init__()
        self.kind = tower_kind(hf_config)
        self.model = _hf_model(self.kind, hf_config)
        # DINOv2 interpolates its position embeddings: it runs at the processor's crop size
        # (cfg.image_size once resolved), not at its config's pretraining size.
        self.image_size = cfg.image_size if self.kind == "dinov2" else hf_config.image_size
        self.channels = hf_config.num_channels
        self.hidden_size = hf_config.hidden_size
        self.feature_layer = cfg.feature_layer
        n_layers = hf_config.num_hidden_layers
        if not -(n_layers + 1) <= cfg.feature_layer <= n_layers:
            raise ValueError(
                f"vision.feature_layer={cfg.feature_layer} is out of range for a tower with "
                f"{n_layers} layers; use -1..-{n_layers + 1} or 0..{n_layers}"
            )
        prefix = _prefix_tokens(self.kind, hf_config)
        self.drop = prefix if cfg.feature_select == "patch" else 0
        self.num_patches = (self.image_size // hf_config.patch_size) ** 2
        self.num_tokens = self.num_patches + prefix - self.drop
        # uint8 batches (as the data loader ships them) are rescaled and normalised here, on
        # the model's device, with the image processor's own constants: x * scale + shift.
        processor = processor or image_processor(replace(cfg, kind=self.kind), self.image_size)
        scale = processor.rescale_factor if processor.do_rescale else 1.0
        mean = torch.tensor(processor.image_mean if processor.do_normalize else [0.0] * 3, dtype=torch.float64)
        std = torch.tensor(processor.image_std if processor.do_normalize else [1.0] * 3, dtype=torch.float64)
        self.register_buffer("pixel_scale", (scale / std).float()[:, None, None], persistent=False)
        self.register_buffer("pixel_shift", (-mean / std).float()[:, None, None], persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, C, S, S) -> features (B, num_tokens, hidden_size). Float input is
        taken as already normalised (the HF processor's output); uint8 is normalised here."""
        _check_pixels(pixel_values, self.channels, self.image_size)
        if pixel_values.dtype == torch.uint8:
            pixel_values = pixel_values.float() * self.pixel_scale + self.pixel_shift
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values.to(dtype), output_hidden_states=True)
        return out.hidden_states[self.feature_layer][:, self.drop:]

    def hf_config_dict(self) -> dict[str, Any]:
        return self.model.config.to_dict()


class FusedTower(nn.Module):
    """DINOv2 and SigLIP on one image: pixels (B, 6, S, S), the DINOv2 tower's preprocessed
    channels then SigLIP's; features (B, N, d_dino + d_siglip), patch features concatenated."""

    def __init__(self, cfg: VisionConfig, hf_config: FusedVisionConfig, processor: ProcessorPair | None = None) -> None:
        super().__init__()
        dino_p, siglip_p = processor.processors if processor else (None, None)
        self.dino = VisionTower(replace(cfg, kind="dinov2", siglip_path=None), hf_config.dino, dino_p)
        self.siglip = VisionTower(replace(cfg, kind="siglip", path=cfg.siglip_path, siglip_path=None),
                                  hf_config.siglip, siglip_p)
        if (self.dino.kind, self.siglip.kind) != ("dinov2", "siglip"):
            raise ValueError(f"model.vision.kind=dinosiglip needs a DINOv2 folder in model.vision.path and a SigLIP "
                             f"one in model.vision.siglip_path (got {self.dino.kind} and {self.siglip.kind})")
        if self.dino.image_size != self.siglip.image_size or self.dino.num_tokens != self.siglip.num_tokens:
            raise ValueError(
                f"model.vision.kind=dinosiglip needs one patch grid: DINOv2 gives {self.dino.num_tokens} patches at "
                f"{self.dino.image_size} px, SigLIP {self.siglip.num_tokens} at {self.siglip.image_size} px; pick towers "
                "(or a DINOv2 crop size) with equal image_size / patch_size")
        self.kind = FUSED
        self.image_size, self.channels = self.dino.image_size, 6
        self.hidden_size = self.dino.hidden_size + self.siglip.hidden_size
        self.num_tokens = self.dino.num_tokens

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        _check_pixels(pixel_values, self.channels, self.image_size)
        return torch.cat([self.dino(pixel_values[:, :3]), self.siglip(pixel_values[:, 3:])], dim=-1)

    def hf_config_dict(self) -> dict[str, Any]:
        return FusedVisionConfig(self.dino.model.config, self.siglip.model.config).to_dict()


def _check_pixels(pixel_values: torch.Tensor, channels: int, size: int) -> None:
    expected = (channels, size, size)
    if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
        raise ValueError(
            f"pixel_values has shape {tuple(pixel_values.shape)}; this vision tower expects "
            f"(batch, {', '.join(map(str, expected))}). Preprocess images with the tower's "
            "image processor (eelight.models.vision.image_processor)"
        )


def pool_grid(features: torch.Tensor, k: int) -> torch.Tensor:
    """(B, side*side, d) patch features in row-major grid order -> (B, (side/k)**2, d), the
    mean of each k x k block (the token-count reduction of e.g. LLaVA-NeXT's video pooling)."""
    if k == 1:
        return features
    b, n, d = features.shape
    side = int(round(n**0.5))
    if side * side != n or side % k:
        raise ValueError(
            f"model.visual_pool={k} needs a square patch grid whose side is a multiple of {k}; "
            f"the tower gives {n} tokens (keep vision.feature_select=patch, or pick another pool)"
        )
    grid = features.view(b, side // k, k, side // k, k, d)
    return grid.mean(dim=(2, 4)).reshape(b, (side // k) ** 2, d)


def image_processor(cfg: VisionConfig, image_size: int, folder: str | Path | None = None) -> Any:
    """The tower's `transformers` image processor: from `folder` (an export) or `cfg.path` when
    it has a `preprocessor_config.json`, else the family's defaults at `image_size` (DINOv2's:
    resize to 256/224 of the crop, centre crop, ImageNet mean and std). kind=dinosiglip: a
    `ProcessorPair` (SigLIP's from `folder/siglip` or `cfg.siglip_path`)."""
    from transformers import BitImageProcessorPil, CLIPImageProcessorPil, SiglipImageProcessorPil

    if cfg.kind == FUSED:
        siglip_folder = Path(folder) / "siglip" if folder else None
        return ProcessorPair((image_processor(replace(cfg, kind="dinov2", siglip_path=None), image_size, folder),
                              image_processor(replace(cfg, kind="siglip", path=cfg.siglip_path, siglip_path=None), image_size,
                                              siglip_folder)))
    cls = {"siglip": SiglipImageProcessorPil, "dinov2": BitImageProcessorPil}.get(cfg.kind, CLIPImageProcessorPil)
    for source in (folder, cfg.path):
        if source and (Path(source) / "preprocessor_config.json").exists():
            return cls.from_pretrained(str(source))
    crop = {"height": image_size, "width": image_size}
    if cfg.kind == "siglip":
        return cls(size=crop)
    if cfg.kind == "dinov2":
        return cls(size={"shortest_edge": round(image_size * 256 / 224)}, crop_size=crop,
                   image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return cls(size={"shortest_edge": image_size}, crop_size=crop)
