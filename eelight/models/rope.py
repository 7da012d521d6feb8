"""Rotary position embeddings (RoPE) with the checkpoint's theta and scaling.

Follows the Hugging Face Llama convention (rotate_half over two halves of the
head dimension) so that weights from HF checkpoints need no permutation.
Scalings: `default`, `linear` (positions / factor) and `llama3` (Llama 3.1's
wavelength-dependent frequency scaling).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from eelight.models.config import LLMConfig


def rope_inv_freq(cfg: LLMConfig) -> torch.Tensor:
    """Inverse frequencies, (head_dim / 2,) float32."""
    dim = cfg.dim_per_head
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if cfg.rope_type == "linear":
        return inv_freq / cfg.rope_factor
    if cfg.rope_type == "llama3":
        low_wavelen = cfg.rope_original_max_positions / cfg.rope_low_freq_factor
        high_wavelen = cfg.rope_original_max_positions / cfg.rope_high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / cfg.rope_factor, inv_freq)
        smooth = (cfg.rope_original_max_positions / wavelen - cfg.rope_low_freq_factor) / (
            cfg.rope_high_freq_factor - cfg.rope_low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, L) -> cos, sin of shape (B, L, 1, head_dim), broadcast over heads."""
        freqs = positions.float()[..., None] * self.inv_freq.to(positions.device)  # (B, L, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)[:, :, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, L, H, hd) rotated at the positions cos/sin were built for."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
