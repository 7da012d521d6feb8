"""Projector: an MLP of depth k from vision features to the LLM width.

Depth 1 is a single linear layer (LLaVA-1.0); depth 2 is LLaVA-1.5's
`mlp2x_gelu` (Linear, GELU, Linear), whose HF keys `linear_1`/`linear_2`
map to `net.0`/`net.2` here.
"""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, Nv, in_dim) -> (B, Nv, out_dim)."""
        return self.net(features)
