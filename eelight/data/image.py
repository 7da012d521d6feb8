"""Fast image preprocessing equal to the vision tower's `transformers` image processor.

The processor's PIL/NumPy backend costs ~1.8 ms per image in Python overhead (its torch
backend needs torchvision, which has no CPU build here). `FastImageTransform` reads the
processor's own settings (resize, resample, crop, rescale, mean/std) and runs the same
steps with PIL and torch; a test checks it against the processor's output. A processor
setting it does not cover raises, so it is never silently different. A fused tower's
processors (an object with `processors`, kind=dinosiglip) give a `FusedImageTransform`: each
tower's own steps, their channels stacked.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

_SUPPORTED = {"do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"}


class FastImageTransform:
    def __init__(self, processor: Any) -> None:
        for flag in ("do_pad", "do_reduce_labels"):
            if getattr(processor, flag, False):
                raise ValueError(f"image processor option {flag}=True is not supported by FastImageTransform")
        self.processor = processor
        size = processor.size
        self.shortest_edge = size.get("shortest_edge")
        self.size = (size.get("height"), size.get("width"))
        if not self.shortest_edge and None in self.size:
            raise ValueError(f"image processor size {dict(size)} is not supported (shortest_edge or height/width)")
        self.resample = Image.Resampling(int(processor.resample))
        crop = processor.crop_size if getattr(processor, "do_center_crop", False) else None
        self.crop = (crop["height"], crop["width"]) if crop else None
        self.do_resize = bool(processor.do_resize)
        scale = float(processor.rescale_factor) if processor.do_rescale else 1.0
        mean = np.array(processor.image_mean if processor.do_normalize else [0, 0, 0], dtype=np.float64)
        std = np.array(processor.image_std if processor.do_normalize else [1, 1, 1], dtype=np.float64)
        # (x * scale - mean) / std  ==  x * a + b, per channel (float32 like the processor)
        self.a = torch.tensor(scale / std, dtype=torch.float32)[:, None, None]
        self.b = torch.tensor(-mean / std, dtype=torch.float32)[:, None, None]

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        if not self.shortest_edge:
            return self.size[1], self.size[0]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> resized, cropped (3, H, W) uint8. Batches stay uint8 until
        `normalize`: 4x less memory to stack and to pass between DataLoader workers."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.do_resize:
            size = self._resized_size(*image.size)
            if size != image.size:
                image = image.resize(size, self.resample)
        if self.crop and self.crop != (image.height, image.width):
            h, w = self.crop
            top, left = (image.height - h) // 2, (image.width - w) // 2
            if top < 0 or left < 0:
                raise ValueError(f"image {image.size} is smaller than the crop {self.crop}; resize it first")
            image = image.crop((left, top, left + w, top + h))
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> float32, rescaled and normalised as the processor does."""
        return pixels.float().mul_(self.a).add_(self.b)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> (3, H, W) float32, normalised."""
        return self.normalize(self.to_uint8(image))


class FusedImageTransform:
    """Two towers' preprocessing of one image, channels stacked: (6, S, S), the first tower's 3
    channels then the second's (both processors must crop to the same size)."""

    def __init__(self, processors: Any) -> None:
        self.parts = [FastImageTransform(p) for p in processors]

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        return torch.cat([part.to_uint8(image) for part in self.parts])

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.cat([part.normalize(chunk) for part, chunk in zip(self.parts, pixels.split(3, dim=-3),
                                                                          strict=True)], dim=-3)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.to_uint8(image))


def image_transform(processor: Any) -> FastImageTransform | FusedImageTransform:
    """The fast transform of a tower's image processor (or of a fused tower's pair); a transform
    is returned as it is."""
    if isinstance(processor, FastImageTransform | FusedImageTransform):
        return processor
    if hasattr(processor, "processors"):
        return FusedImageTransform(processor.processors)
    return FastImageTransform(processor)
