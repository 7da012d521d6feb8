"""Flamingo-style gated cross-attention (Alayrac et al. 2022), arch=flamingo.

The LLM sees only text. Before every `cross_every`-th decoder layer a new block
lets text rows attend to the visual tokens:

    h_T += tanh(a_attn) * Wo' softmax(Wq' n(h_T) (Wk' n(V))ᵀ/√d) Wv' n(V)
    h_T += tanh(a_ffn)  * FFN'(n'(h_T))

Text before the image (its `<image>` marker, see `layout`) has no image to
attend to: as in OpenFlamingo its attention term is zeroed; the gated FFN
still runs on every row.

The gates a_attn, a_ffn start at 0, so at initialisation the model is exactly
the text-only LLM. Every parameter here is new: that is the data-efficiency
contrast the EE-MLLM paper draws against weight reuse.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eelight.models.blocks import RMSNorm, SwiGLU
from eelight.models.config import LLMConfig
from eelight.models.kv_cache import LayerCache
from eelight.models.roles import CROSS_ATTN, with_role


class GatedCrossAttention(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        d, hd, heads = cfg.hidden_size, cfg.dim_per_head, cfg.num_heads
        self.n_heads, self.head_dim = heads, hd
        self.norm = RMSNorm(d, cfg.rms_norm_eps)
        self.visual_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(d, heads * hd, bias=False)
        self.k_proj = nn.Linear(d, heads * hd, bias=False)
        self.v_proj = nn.Linear(d, heads * hd, bias=False)
        self.o_proj = nn.Linear(heads * hd, d, bias=False)
        self.ffn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.ffn = SwiGLU(d, cfg.intermediate_size)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ffn_gate = nn.Parameter(torch.zeros(1))
        with_role(self, CROSS_ATTN)  # new parameters, trained from the align stage on

    def visual_keys_values(self, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """visual (B, Nv, d) -> K, V (B, H, Nv, hd)."""
        b, nv, _ = visual.shape
        v_in = self.visual_norm(visual)
        k = self.k_proj(v_in).view(b, nv, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(v_in).view(b, nv, self.n_heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(
        self,
        h: torch.Tensor,
        visual: torch.Tensor | None,
        cache: LayerCache | None = None,
        media_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """h (B, Nt, d) text rows; visual (B, Nv, d); media_rows (B, Nt) bool, the rows
        after the image (None: all). During cached decoding `visual` may be None: the
        visual K/V computed at prefill are reused from the cache."""
        if cache is not None and cache.cross is not None:
            k, v = cache.cross
        elif visual is None:
            return h  # text-only input: nothing to attend to
        else:
            k, v = self.visual_keys_values(visual)
            if cache is not None:
                cache.cross = (k, v)
        b, nt, _ = h.shape
        q = self.q_proj(self.norm(h)).view(b, nt, self.n_heads, self.head_dim).transpose(1, 2)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, nt, -1)
        if media_rows is not None:
            attn = attn * media_rows[..., None].to(attn.dtype)
        h = h + torch.tanh(self.attn_gate) * self.o_proj(attn)
        return h + torch.tanh(self.ffn_gate) * self.ffn(self.ffn_norm(h))
