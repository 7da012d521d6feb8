"""One attention path for every variant (docs/DESIGN.md §1 and §8), driven by the layer's
`LayerRule` (models/rules.py).

Hidden states of one layer are a single tensor `h = [h_I; h_T]` of shape
(B, Nv + Nt, d): Nv visual rows first, then Nt text rows. `x = norm1(h)`.

- Visual rows that query (LLaVA, AKI, ShortV outside its layers): the plain causal decoder
  attention over all N = Nv + Nt rows.
- Visual rows as keys/values only (EE-MLLM, ViCA, SAISA, ShortV inside its layers), composite
  attention:

      Q = Wq x_T                       (text queries only: no Wq x_I)
      K = Wk [x_I; x_T], V = Wv [x_I; x_T]   (RoPE on Q, K at their true positions)
      h_T += Wo softmax(Q Kᵀ/√d + M) V

  where M lets text row i see every visual column and text columns <= i: a causal mask
  aligned to the *bottom right* of the Nt x N score matrix (`bottom_right`: SDPA's
  `causal_lower_right` in eager mode, a plain bool mask under torch.compile; or
  `flash_attn_func(causal=True)`, which aligns bottom-right when seqlen_q < seqlen_k). There
  are no Nv x Nv scores. When the image stands mid-text (`layout`: its `<image>` marker), M is
  instead the dense mask over true positions, so text before the image sees no visual column.
- Text that does not see the image in this layer (ViCA outside its layers): attention over the
  text rows alone; the visual K/V are not computed, and the layer's cache holds none.

Visual rows that do not query are updated as the rule says:

- `reuse`: a visual token attending only to itself has softmax weight 1, so
  its attention output is its own value: h_I += Wo (Wv x_I). `Wv x_I` is the
  slice of V already computed for the keys; with grouped-query attention its
  kv heads are repeated to the query-head count before Wo. Visual and text rows
  then share one Wo matmul over [repeat(V_I); attn_T].
- `fresh`: the same update with new per-layer weights Wv', Wo' of the same shapes
  (initialised as copies of Wv, Wo or at random).
- `none`: h_I is not updated (SAISA re-makes it from the vision features before the layer).

`Attention` returns `(delta, start, ranking)`: the residual update for rows `start:` (start =
0, or Nv when the visual rows get no update) and, when asked, FastV's ranking of the visual
tokens by the last query's attention. A layer with fewer keys than the mask has columns (its
cache holds no or fewer visual keys) uses the mask's last columns.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from eelight.models.blocks import RMSNorm
from eelight.models.config import LLMConfig
from eelight.models.flex import flex_attend
from eelight.models.kv_cache import LayerCache
from eelight.models.roles import ALIGNER, with_role
from eelight.models.rope import apply_rope
from eelight.models.rules import LayerRule

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
    if mask is not None and mask.shape[-1] > lk:  # this layer keeps fewer keys (ViCA, FastV): the last lk
        mask = mask[..., -lk:]
    if impl == "flex":
        return flex_attend(q, k, v, mask)
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


def _rows(mask: torch.Tensor | None, start: int) -> torch.Tensor | None:
    """The mask's rows from `start` on (the queries when the rows before are not queries)."""
    return mask if mask is None or start == 0 else mask[:, :, start:]


def last_query_visual_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, n_visual: int,
                            from_end: int = 1) -> torch.Tensor:
    """FastV's ranking: the attention probabilities of each sample's last query (`from_end`: the
    query that many rows from the end; the prompt's last token when generating without a cache)
    over the first `n_visual` keys (its visual tokens, at a prefill), averaged over heads: (B, Nv)."""
    b, _, h, hd = q.shape
    keys = repeat_kv(k, h // k.shape[2])
    scores = torch.einsum("bhd,blhd->bhl", q[:, -from_end].float(), keys.float()) / math.sqrt(hd)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, :, -from_end, -keys.shape[1]:], float("-inf"))
    elif from_end > 1:  # bottom-right causal: that query does not see the last from_end - 1 keys
        scores[..., keys.shape[1] - from_end + 1:] = float("-inf")
    return torch.softmax(scores, dim=-1)[..., :n_visual].mean(1)


class Attention(nn.Module):
    """Grouped-query attention for every variant: which rows query and which keys they see
    follow the layer's `LayerRule` (models/rules.py). Parameter names are HF Llama's, plus
    `aligner_v`, `aligner_o` for aligner=fresh."""

    def __init__(self, cfg: LLMConfig, aligner: str = "none", attn_impl: str = "auto") -> None:
        super().__init__()
        d, hd = cfg.hidden_size, cfg.dim_per_head
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.attn_impl = attn_impl
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=False)
        if cfg.qk_norm:  # Qwen3: every query and key (visual ones too) normalised per head
            self.q_norm, self.k_norm = RMSNorm(hd, cfg.rms_norm_eps), RMSNorm(hd, cfg.rms_norm_eps)
        if aligner == "fresh":
            # New trainable per-layer Wv', Wo' with the shapes of Wv, Wo (no weight reuse).
            self.aligner_v = with_role(nn.Linear(d, cfg.num_kv_heads * hd, bias=cfg.qkv_bias), ALIGNER)
            self.aligner_o = with_role(nn.Linear(cfg.num_heads * hd, d, bias=False), ALIGNER)

    def keys_values(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: LayerCache | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """K (RoPE'd) and V over all rows, extended by the cache: (B, Lk, Hkv, hd) each.

        Also returns this call's own V rows (B, N, Hkv, hd), before the cache is prepended.
        """
        b, n, _ = x.shape
        k = apply_rope(self._norm("k_norm", self.k_proj(x).view(b, n, self.n_kv_heads, self.head_dim)), cos, sin)
        v_new = self.v_proj(x).view(b, n, self.n_kv_heads, self.head_dim)
        k_all, v_all = (k, v_new) if cache is None else cache.append(k, v_new)
        return k_all, v_all, v_new

    def queries(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return apply_rope(self._norm("q_norm", self.q_proj(x).view(b, n, self.n_heads, self.head_dim)), cos, sin)

    def _norm(self, name: str, heads: torch.Tensor) -> torch.Tensor:
        norm = getattr(self, name, None)
        return heads if norm is None else norm(heads)

    def forward(
        self,
        x: torch.Tensor,
        n_visual: int,
        cos: torch.Tensor,
        sin: torch.Tensor,
        rule: LayerRule,
        mask: torch.Tensor | None = None,
        cache: LayerCache | None = None,
        rank: int = 0,
    ) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """(the residual update of rows `start:`, start, FastV's visual ranking by the query `rank`
        rows from the end; none when `rank` is 0)."""
        nv = n_visual
        if not rule.text_sees_visual:  # ViCA outside its layers: text over text, no visual K/V at all
            k, v, _ = self.keys_values(x[:, nv:], cos[:, nv:], sin[:, nv:], cache)
            q = self.queries(x[:, nv:], cos[:, nv:], sin[:, nv:])
            return self.o_proj(attend(q, k, v, _rows(mask, nv), self.attn_impl)), nv, None
        k, v, v_new = self.keys_values(x, cos, sin, cache)
        start = 0 if rule.visual_queries else nv
        q = self.queries(x[:, start:], cos[:, start:], sin[:, start:])  # visual queries only when they query
        out = attend(q, k, v, _rows(mask, start), self.attn_impl)
        probs = last_query_visual_probs(q, k, _rows(mask, start), nv, rank) if rank else None
        if rule.visual_queries or nv == 0 or rule.update == "none":
            return self.o_proj(out), start, probs
        return self._update_visual(x, v_new, out, nv), 0, probs

    def _update_visual(self, x: torch.Tensor, v_new: torch.Tensor, attn_t: torch.Tensor, nv: int) -> torch.Tensor:
        """The aligner's update of the visual rows (each attends to itself alone), with the text's."""
        b, n_rep = x.shape[0], self.n_heads // self.n_kv_heads
        if not hasattr(self, "aligner_v"):  # reuse: Wv x_I is v_new[:, :Nv]; one Wo matmul for both
            v_i = repeat_kv(v_new[:, :nv], n_rep).reshape(b, nv, -1)
            return self.o_proj(torch.cat([v_i, attn_t], dim=1))
        v_i = self.aligner_v(x[:, :nv]).view(b, nv, self.n_kv_heads, self.head_dim)
        delta_i = self.aligner_o(repeat_kv(v_i, n_rep).reshape(b, nv, -1))
        return torch.cat([delta_i, self.o_proj(attn_t)], dim=1)

    def copy_aligner_from_llm(self) -> None:
        """aligner_init=copy: start Wv', Wo' as copies of this layer's (loaded) Wv, Wo."""
        with torch.no_grad():
            self.aligner_v.weight.copy_(self.v_proj.weight)
            if self.v_proj.bias is not None:
                self.aligner_v.bias.copy_(self.v_proj.bias)
            self.aligner_o.weight.copy_(self.o_proj.weight)
