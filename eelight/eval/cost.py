"""Training cost per sample: forward FLOPs of a model config, counted with
`FlopCounterMode` on the meta device (no weights allocated, any size)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from eelight.models.config import ModelConfig


def forward_cost(cfg: ModelConfig, n_text: int) -> tuple[int, int]:
    """(forward FLOPs for one sample of n_text text tokens and one image, visual tokens)."""
    from eelight.models import hf_loading
    from eelight.models.mllm import MLLM
    from eelight.models.vision import vision_hf_config

    llm, _ = hf_loading.resolve_llm(cfg.llm)
    vision = (hf_loading.vision_config_from_hf(hf_loading.read_config(cfg.vision.path)) if cfg.vision.path
              else vision_hf_config(cfg.vision))
    with torch.device("meta"):
        model = MLLM(cfg, llm, vision)
    size = model.vision.image_size
    ids = torch.zeros(1, n_text, dtype=torch.long, device="meta")
    pixels = torch.empty(1, 3, size, size, device="meta")
    with torch.no_grad():
        model(ids, pixels)  # warm-up outside the counter: builds the cached causal bias
        with FlopCounterMode(display=False) as counter:
            model(ids, pixels)
    return int(counter.get_total_flops()), model.num_visual_tokens
