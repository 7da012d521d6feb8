"""Vision tower: a `transformers` CLIP or SigLIP vision model, from a local HF
folder (weights loaded by `hf_loading`) or built from sizes for tiny runs.

Features are the hidden states of `feature_layer` (LLaVA: -2, the penultimate
layer); `feature_select=patch` drops CLIP's CLS token (LLaVA's "default"
strategy). SigLIP has no CLS token, so `patch` keeps every token there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from eelight.models.config import VisionConfig


def vision_hf_config(cfg: VisionConfig) -> Any:
    """The `transformers` vision config for a tiny tower built from `cfg`'s sizes."""
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    cls = CLIPVisionConfig if cfg.kind == "clip" else SiglipVisionConfig
    return cls(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
    )


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig, hf_config: Any, processor: Any | None = None) -> None:
        super().__init__()
        from transformers import CLIPVisionModel, SiglipVisionModel

        self.kind = "siglip" if "siglip" in hf_config.model_type else "clip"
        self.model = (SiglipVisionModel if self.kind == "siglip" else CLIPVisionModel)(hf_config)
        self.image_size = hf_config.image_size
        self.channels = hf_config.num_channels
        self.hidden_size = hf_config.hidden_size
        self.feature_layer = cfg.feature_layer
        n_layers = hf_config.num_hidden_layers
        if not -(n_layers + 1) <= cfg.feature_layer <= n_layers:
            raise ValueError(
                f"vision.feature_layer={cfg.feature_layer} is out of range for a tower with "
                f"{n_layers} layers; use -1..-{n_layers + 1} or 0..{n_layers}"
            )
        self.drop_cls = self.kind == "clip" and cfg.feature_select == "patch"
        n_patches = (self.image_size // hf_config.patch_size) ** 2
        self.num_tokens = n_patches + (0 if self.kind == "siglip" or self.drop_cls else 1)
        # uint8 batches (as the data loader ships them) are rescaled and normalised here, on
        # the model's device, with the image processor's own constants: x * scale + shift.
        processor = processor or image_processor(cfg, self.image_size)
        scale = processor.rescale_factor if processor.do_rescale else 1.0
        mean = torch.tensor(processor.image_mean if processor.do_normalize else [0.0] * 3, dtype=torch.float64)
        std = torch.tensor(processor.image_std if processor.do_normalize else [1.0] * 3, dtype=torch.float64)
        self.register_buffer("pixel_scale", (scale / std).float()[:, None, None], persistent=False)
        self.register_buffer("pixel_shift", (-mean / std).float()[:, None, None], persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, C, S, S) -> features (B, num_tokens, hidden_size). Float input is
        taken as already normalised (the HF processor's output); uint8 is normalised here."""
        expected = (self.channels, self.image_size, self.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; this vision tower expects "
                f"(batch, {', '.join(map(str, expected))}). Preprocess images with the tower's "
                "image processor (eelight.models.vision.image_processor)"
            )
        if pixel_values.dtype == torch.uint8:
            pixel_values = pixel_values.float() * self.pixel_scale + self.pixel_shift
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values.to(dtype), output_hidden_states=True)
        features = out.hidden_states[self.feature_layer]
        return features[:, 1:] if self.drop_cls else features


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


def image_processor(cfg: VisionConfig, image_size: int) -> Any:
    """The tower's `transformers` image processor: from `cfg.path` when it has a
    `preprocessor_config.json`, else CLIP/SigLIP defaults at `image_size`."""
    from pathlib import Path

    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    cls = SiglipImageProcessorPil if cfg.kind == "siglip" else CLIPImageProcessorPil
    if cfg.path and (Path(cfg.path) / "preprocessor_config.json").exists():
        return cls.from_pretrained(cfg.path)
    if cfg.kind == "siglip":
        return cls(size={"height": image_size, "width": image_size})
    return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
