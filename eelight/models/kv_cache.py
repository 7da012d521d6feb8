"""Key/value cache for generation: per layer, the RoPE'd keys and the values of every
row seen so far (visual and text), plus Flamingo's cross-attention keys/values."""

from __future__ import annotations

import torch


class LayerCache:
    """One layer's cache. Tensors are (B, L, Hkv, hd); L grows by the rows appended."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.cross: tuple[torch.Tensor, torch.Tensor] | None = None  # Flamingo visual K, V

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=1)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=1)
        return self.k, self.v


class KVCache:
    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerCache() for _ in range(n_layers)]

    def __getitem__(self, i: int) -> LayerCache:
        return self.layers[i]

    @property
    def length(self) -> int:
        """Rows cached so far (0 before the prefill): the most any layer holds (a ViCA layer
        without visual keys, or one after FastV's pruning, holds fewer)."""
        return max((0 if layer.k is None else layer.k.shape[1]) for layer in self.layers)
