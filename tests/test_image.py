"""The fast image transform equals the `transformers` image processor it reads its settings from."""

import numpy as np
import pytest
from PIL import Image

from eelight.data.image import FastImageTransform
from eelight.models.config import VisionConfig
from eelight.models.vision import image_processor


@pytest.mark.parametrize("kind,size", [("clip", 336), ("siglip", 224), ("clip", 32)])
@pytest.mark.parametrize("wh", [(1, 1), (500, 375), (375, 500), (1.02, 1.01), (40, 90)])
def test_fast_transform_equals_hf_processor(kind, size, wh):
    w, h = (int(wh[0] * size), int(wh[1] * size)) if isinstance(wh[0], float) or wh == (1, 1) else wh
    image = Image.fromarray(np.random.default_rng(w * h).integers(0, 255, (h, w, 3), dtype=np.uint8))
    proc = image_processor(VisionConfig(kind=kind), size)
    expected = proc(images=image, return_tensors="pt")["pixel_values"][0]
    got = FastImageTransform(proc)(image)
    assert got.shape == expected.shape == (3, size, size)
    assert (got - expected).abs().max().item() < 1e-5


def test_grey_and_rgba_images_become_rgb():
    proc = image_processor(VisionConfig(kind="clip"), 32)
    for mode in ("L", "RGBA"):
        image = Image.new(mode, (40, 40), 128 if mode == "L" else (128, 10, 10, 255))
        expected = proc(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        assert (FastImageTransform(proc)(image) - expected).abs().max() < 1e-5


def test_uint8_batches_are_normalised_in_the_vision_tower_like_the_processor():
    import torch

    from eelight.models import build_mllm, model_config

    model = build_mllm(model_config("ee_mllm")).eval()
    proc = image_processor(VisionConfig(kind="clip"), 32)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8))
              for i in range(3)]
    uint8 = torch.stack([FastImageTransform(proc).to_uint8(im) for im in images])
    assert uint8.dtype == torch.uint8
    floats = proc(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        assert (model.vision(uint8) - model.vision(floats)).abs().max() < 1e-5
