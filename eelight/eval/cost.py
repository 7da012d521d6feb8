"""Training cost per sample: forward FLOPs of a model config, counted with
`FlopCounterMode` on the meta device (no weights allocated, any size)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from eelight.models.config import ModelConfig
from eelight.models.hf_loading import ResolvedModel, resolve


def forward_cost(model_cfg: ModelConfig | ResolvedModel, n_text: int) -> tuple[int, int]:
    """(forward FLOPs for one sample of n_text text tokens and one image, visual tokens)."""
    from eelight.models.mllm import MLLM

    resolved = resolve(model_cfg)
    with torch.device("meta"):
        model = MLLM(resolved.cfg, resolved.cfg.llm, resolved.vision_hf)
    size = model.vision.image_size
    ids = torch.zeros(1, n_text, dtype=torch.long, device="meta")
    pixels = torch.empty(1, model.vision.channels, size, size, device="meta")
    with torch.no_grad():
        model(ids, pixels)  # warm-up outside the counter: builds the cached causal bias
        with FlopCounterMode(display=False) as counter:
            model(ids, pixels)
    return int(counter.get_total_flops()), model.num_visual_tokens
