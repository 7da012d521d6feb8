"""`model.visual_pool` (k x k average pooling of the patch grid, against torch's avg_pool2d) and
`model.blind` (the question-only control)."""

import pytest
import torch
import torch.nn.functional as F

from eelight.models import build_mllm, model_config
from eelight.models.vision import pool_grid


def test_pool_grid_equals_avg_pool2d_over_the_image_grid():
    torch.manual_seed(0)
    b, side, d = 2, 6, 5
    grid = torch.randn(b, d, side, side)  # channels first: the image layout avg_pool2d expects
    tokens = grid.flatten(2).transpose(1, 2)  # (B, side*side, d), row-major like the patch order
    expected = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pool_grid(tokens, 2), expected)
    torch.testing.assert_close(pool_grid(tokens, 3), F.avg_pool2d(grid, 3).flatten(2).transpose(1, 2))
    assert pool_grid(tokens, 1) is tokens


def test_pooled_model_feeds_four_times_fewer_tokens():
    torch.manual_seed(0)
    model = build_mllm(model_config("ee_mllm_pool2")).eval()  # 32 px, patch 8: 4 x 4 -> 2 x 2
    assert model.num_visual_tokens == 4
    pixels = torch.randn(2, 3, 32, 32)
    features = model.vision(pixels)
    assert features.shape[1] == 16
    grid = features.transpose(1, 2).reshape(2, -1, 4, 4)
    reference = model.projector(F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2))
    torch.testing.assert_close(model.encode_images(pixels), reference)
    out = model(torch.randint(0, 128, (2, 7)), pixels)
    assert out.logits.shape == (2, 7, 128)


@pytest.mark.parametrize("pool,select", [(3, "patch"), (2, "full")])
def test_pool_that_does_not_tile_the_grid_is_refused_at_build(pool, select):
    cfg = model_config("ee_mllm", visual_pool=pool)
    cfg.vision.feature_select = select
    with pytest.raises(ValueError, match=r"model\.visual_pool="):
        build_mllm(cfg)


def test_pool_below_one_is_refused():
    with pytest.raises(ValueError, match=r"model\.visual_pool=0"):
        model_config("ee_mllm", visual_pool=0)


def test_blind_model_ignores_the_image_at_equal_cost():
    torch.manual_seed(0)
    blind = build_mllm(model_config("ee_mllm_blind")).eval()
    ids = torch.randint(0, 128, (2, 7))
    a, b = torch.randint(0, 256, (2, 2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        out_a, out_b = blind(ids, a).logits, blind(ids, b).logits
        seeing = build_mllm(model_config("ee_mllm")).eval()
        seeing.load_state_dict(blind.state_dict())
        black = seeing(ids, torch.zeros_like(a)).logits
    torch.testing.assert_close(out_a, out_b)
    torch.testing.assert_close(out_a, black)  # the same weights shown a black image
    assert not torch.allclose(seeing(ids, a).logits, black)
    assert blind.num_visual_tokens == seeing.num_visual_tokens
