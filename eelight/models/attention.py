"""Self-attention (LLaVA) and composite attention (EE-MLLM), docs/DESIGN.md §1.

Hidden states of one layer are a single tensor `h = [h_I; h_T]` of shape
(B, Nv + Nt, d): Nv visual rows first, then Nt text rows. `x = norm1(h)`.

`SelfAttention` (visual_attn=self) is the plain causal decoder attention over
all N = Nv + Nt rows — LLaVA.

`CompositeAttention` (visual_attn=none) is EE-MLLM's:

    Q = Wq x_T                       (text queries only: no Wq x_I)
    K = Wk [x_I; x_T], V = Wv [x_I; x_T]   (RoPE on Q, K at their true positions)
    h_T += Wo softmax(Q Kᵀ/√d + M) V

where M lets text row i see every visual column and text columns <= i: a
causal mask aligned to the *bottom right* of the Nt x N score matrix (`bottom_right`:
SDPA's `causal_lower_right` in eager mode, a plain bool mask under torch.compile; or
`flash_attn_func(causal=True)`, which aligns bottom-right when seqlen_q < seqlen_k). There are no Nv x Nv scores. When the
image stands mid-text (`layout`: its `<image>` marker), M is instead the dense
mask over true positions, so text before the image sees no visual column.

Visual rows are updated by the aligner:

- `reuse`: a visual token attending only to itself has softmax weight 1, so
  its attention output is its own value: h_I += Wo (Wv x_I). `Wv x_I` is the
  slice of V already computed for the keys; with grouped-query attention its
  kv heads are repeated to the query-head count before Wo. Visual and text rows
  then share one Wo matmul over [repeat(V_I); attn_T].
- `fresh`: the same update with new per-layer weights Wv', Wo' of the same shapes
  (initialised as copies of Wv, Wo or at random).
- `none`: h_I is not updated.

Both classes return `(delta, start)`: the residual update for rows `start:`
(start = 0, or Nv when the visual rows get no update).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from eelight.models.config import LLMConfig
from eelight.models.kv_cache import LayerCache
from eelight.models.roles import ALIGNER, with_role
from eelight.models.rope import apply_rope

try:  # optional CUDA extra
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_func = None


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, L, Hkv, hd) -> (B, L, Hkv * n_rep, hd), each kv head repeated n_rep times."""
    if n_rep == 1:
        return x
    b, length, h_kv, hd = x.shape
    return x[:, :, :, None, :].expand(b, length, h_kv, n_rep, hd).reshape(b, length, h_kv * n_rep, hd)


def bottom_right(lq: int, lk: int, device: torch.device):
    """The causal mask aligned to the bottom right for Lq queries over Lk keys: query i sees
    keys j <= i + Lk - Lq. Under torch.compile a plain (Lq, Lk) bool tensor, which traces
    without a graph break and which CUDA graphs can capture (SDPA's `causal_lower_right` is a
    tensor subclass that breaks both); in eager mode that subclass, one object per shape, since
    SDPA's kernels take it without materialising a mask (an explicit bool mask made the CPU
    training step 8% slower at Vicuna-7B layer shapes: BENCHMARKS.md). The subclass cannot be
    created under a dispatch mode such as FlopCounterMode: a warm-up call outside builds it."""
    if torch.compiler.is_compiling():
        return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(lk - lq)
    return _lower_right(lq, lk)


@lru_cache(maxsize=64)
def _lower_right(lq: int, lk: int):
    return causal_lower_right(lq, lk)


def use_flash(impl: str, q: torch.Tensor) -> bool:
    """flash-attn runs only on CUDA in fp16/bf16; `auto` falls back to SDPA elsewhere."""
    if impl == "sdpa":
        return False
    ok = flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
    if impl == "flash" and not ok:
        raise RuntimeError(
            "model.attn_impl=flash needs flash-attn installed, a CUDA device and fp16/bf16 "
            f"(got flash-attn {'present' if flash_attn_func else 'missing'}, device {q.device}, "
            f"{q.dtype}); use model.attn_impl=auto to fall back to PyTorch SDPA"
        )
    return ok


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, impl: str
) -> torch.Tensor:
    """Bottom-right causal attention. q (B, Lq, H, hd); k, v (B, Lk, Hkv, hd) with Lq <= Lk.

    `mask` (B, 1, Lq, Lk) bool, True = attend, replaces the implicit causal mask
    when padding must be masked too (see `mllm.attention_mask`). Returns (B, Lq, H * hd).
    """
    b, lq, h, hd = q.shape
    lk = k.shape[1]
    if mask is None and use_flash(impl, q):
        return flash_attn_func(q, k, v, causal=True).reshape(b, lq, h * hd)
    if mask is None:
        # Lq == 1 sees every key; Lq == Lk is ordinary causal; else bottom-right causal.
        mask = None if lq == 1 or lq == lk else bottom_right(lq, lk, q.device)
        is_causal = lq == lk and lq > 1
    else:
        is_causal = False
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=mask, is_causal=is_causal, enable_gqa=k.shape[2] != h,
    )  # (B, H, Lq, hd)
    return out.transpose(1, 2).reshape(b, lq, h * hd)


class SelfAttention(nn.Module):
    """Grouped-query causal self-attention over every row (visual_attn=self, LLaVA)."""

    def __init__(self, cfg: LLMConfig, attn_impl: str = "auto") -> None:
        super().__init__()
        d, hd = cfg.hidden_size, cfg.dim_per_head
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.attn_impl = attn_impl
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=False)

    def keys_values(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: LayerCache | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """K (RoPE'd) and V over all rows, extended by the cache: (B, Lk, Hkv, hd) each.

        Also returns this call's own V rows (B, N, Hkv, hd), before the cache is prepended.
        """
        b, n, _ = x.shape
        k = apply_rope(self.k_proj(x).view(b, n, self.n_kv_heads, self.head_dim), cos, sin)
        v_new = self.v_proj(x).view(b, n, self.n_kv_heads, self.head_dim)
        k_all, v_all = (k, v_new) if cache is None else cache.append(k, v_new)
        return k_all, v_all, v_new

    def queries(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return apply_rope(self.q_proj(x).view(b, n, self.n_heads, self.head_dim), cos, sin)

    def forward(
        self,
        x: torch.Tensor,
        n_visual: int,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> tuple[torch.Tensor, int]:
        k, v, _ = self.keys_values(x, cos, sin, cache)
        out = attend(self.queries(x, cos, sin), k, v, mask, self.attn_impl)
        return self.o_proj(out), 0


class CompositeAttention(SelfAttention):
    """EE-MLLM composite attention (visual_attn=none): text queries only, aligner on visual rows."""

    def __init__(self, cfg: LLMConfig, aligner: str = "reuse", attn_impl: str = "auto") -> None:
        super().__init__(cfg, attn_impl)
        self.aligner = aligner
        if aligner == "fresh":
            # New trainable per-layer Wv', Wo' with the shapes of Wv, Wo (no weight reuse).
            self.aligner_v = with_role(nn.Linear(cfg.hidden_size, cfg.num_kv_heads * self.head_dim,
                                                 bias=cfg.qkv_bias), ALIGNER)
            self.aligner_o = with_role(nn.Linear(cfg.num_heads * self.head_dim, cfg.hidden_size, bias=False), ALIGNER)

    def forward(
        self,
        x: torch.Tensor,
        n_visual: int,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> tuple[torch.Tensor, int]:
        n_rep = self.n_heads // self.n_kv_heads
        k, v, v_new = self.keys_values(x, cos, sin, cache)  # keys/values over [I; T]
        q = self.queries(x[:, n_visual:], cos[:, n_visual:], sin[:, n_visual:])  # (B, Nt, H, hd)
        mask_t = None if mask is None else mask[:, :, n_visual:]  # the mask has a row per input row
        attn_t = attend(q, k, v, mask_t, self.attn_impl)  # (B, Nt, H*hd)
        if n_visual == 0 or self.aligner == "none":
            return self.o_proj(attn_t), n_visual
        b = x.shape[0]
        if self.aligner == "reuse":
            # Wv x_I is v_new[:, :Nv]: reuse it, and share one Wo matmul with the text rows.
            v_i = repeat_kv(v_new[:, :n_visual], n_rep).reshape(b, n_visual, -1)
            return self.o_proj(torch.cat([v_i, attn_t], dim=1)), 0
        v_i = self.aligner_v(x[:, :n_visual]).view(b, n_visual, self.n_kv_heads, self.head_dim)
        delta_i = self.aligner_o(repeat_kv(v_i, n_rep).reshape(b, n_visual, -1))
        return torch.cat([delta_i, self.o_proj(attn_t)], dim=1), 0

    def copy_aligner_from_llm(self) -> None:
        """aligner_init=copy: start Wv', Wo' as copies of this layer's (loaded) Wv, Wo."""
        with torch.no_grad():
            self.aligner_v.weight.copy_(self.v_proj.weight)
            if self.v_proj.bias is not None:
                self.aligner_v.bias.copy_(self.v_proj.bias)
            self.aligner_o.weight.copy_(self.o_proj.weight)
