"""The optional FlexAttention backend (`model.attn_impl=flex`): the same attention as the SDPA
path (models/attention.py), with the layer's mask given to `flex_attention` as a block mask.

- No mask: the bottom-right causal rule, key j visible to query i iff j <= i + Lk - Lq (text
  queries over [I; T] in composite attention, plain causal when Lq == Lk, every key for one
  decoding step). Its block mask depends on (Lq, Lk) alone and is built once per shape.
- A dense mask (padding, `<image>` mid-text, AKI's image-to-question rows): the block mask
  reads that tensor, so blocks where it is all False are skipped, not computed.

Rows that see no key at all (padding queries) give 0 where SDPA gives NaN or an arbitrary mean;
no loss or answer reads them.

On CPU, torch's FlexAttention is inference only (no backward, torch 2.13): training with it
is refused when the run is configured (`training/config.py`), and a tensor that requires grad
gets one line here. Eager calls use one `torch.compile`d kernel (the unfused eager fallback
materialises every score), compiled once per (Lq, Lk) up to dynamo's recompile limit (8), then
unfused; a decoding step (Lq = 1) runs unfused, its 1 x Lk scores being all there is, so the
growing cache compiles nothing. Inside a compiled model the call is traced with the model.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from eelight.models.config import FLEX_NO_CPU_BACKWARD


def flex_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """q (B, Lq, H, hd); k, v (B, Lk, Hkv, hd); mask (B, 1, Lq, Lk) bool or None (bottom-right
    causal). Returns (B, Lq, H * hd)."""
    b, lq, h, hd = q.shape
    lk = k.shape[1]
    if q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        raise RuntimeError(FLEX_NO_CPU_BACKWARD)
    blocks = block_mask(mask, lq, lk, q.device)
    args = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    kw = dict(block_mask=blocks, enable_gqa=k.shape[2] != h)
    if torch.compiler.is_compiling():
        out = flex_attention(*args, **kw)
    elif lq == 1:  # a decoding step: its 1 x Lk scores are all there is; no kernel per cache length
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            out = flex_attention(*args, **kw)
    else:
        out = _compiled()(*args, **kw)
    return out.transpose(1, 2).reshape(b, lq, h * hd)


def block_mask(mask: torch.Tensor | None, lq: int, lk: int, device: torch.device) -> BlockMask:
    """The block mask of a dense bool mask (B, 1, Lq, Lk), or of bottom-right causal (None)."""
    if mask is None:
        if torch.compiler.is_compiling():
            return _bottom_right(lq, lk, device)
        return _bottom_right_cached(lq, lk, str(device))
    dense = mask[:, 0]

    def lookup(b, h, q_idx, kv_idx):
        return dense[b, q_idx, kv_idx]

    return create_block_mask(lookup, mask.shape[0], None, lq, lk, device=device)


def _bottom_right(lq: int, lk: int, device: torch.device | str) -> BlockMask:
    offset = lk - lq

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offset

    return create_block_mask(causal, None, None, lq, lk, device=device)


@lru_cache(maxsize=64)
def _bottom_right_cached(lq: int, lk: int, device: str) -> BlockMask:
    return _bottom_right(lq, lk, device)


@lru_cache(maxsize=1)
def _compiled():
    return torch.compile(flex_attention, dynamic=False)
