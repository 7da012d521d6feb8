"""Llama-family decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention, optional qkv
bias for Qwen2) whose layers move visual rows as the model variant says.

Input is one tensor h = [h_I; h_T] (B, Nv + Nt, d). Per layer (docs/DESIGN.md §1):

    h += attention(norm1(h))            rows updated as the attention class says
    h_T += FFN(norm2(h_T))              and h_I too when aligner_ffn=true
    (flamingo) h_T = xattn(h_T, visual) before the layer, every cross_every layers

After the last layer only h_T goes through the final norm and the LM head.
Each `DecoderLayer`, with whatever the variant adds (aligner copies, Flamingo
cross-attention), is one FSDP wrap unit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from eelight.models.attention import Attention
from eelight.models.blocks import RMSNorm, SwiGLU
from eelight.models.config import LLMConfig, ModelConfig
from eelight.models.flamingo import GatedCrossAttention
from eelight.models.kv_cache import KVCache
from eelight.models.roles import ALIGNER, IDLE, LLM, NEW, parameter_roles, with_role
from eelight.models.rope import RotaryEmbedding
from eelight.models.rules import LayerRule, layer_rules


def add_rows(h: torch.Tensor, delta: torch.Tensor, start: int) -> torch.Tensor:
    """h + delta on rows `start:` of h; rows before `start` are kept as they are."""
    if start == 0:
        return h + delta
    return torch.cat([h[:, :start], h[:, start:] + delta], dim=1)


def saisa_mlp(vision_width: int, d: int) -> nn.Module:
    """SAISA's per-layer `Linear(d_vision -> d) -> GELU -> Linear(d -> d)` of the vision features."""
    return with_role(nn.Sequential(nn.Linear(vision_width, d), nn.GELU(), nn.Linear(d, d)), ALIGNER)


class DecoderLayer(nn.Module):
    def __init__(self, llm: LLMConfig, model: ModelConfig, rule: LayerRule, cross_attn: nn.Module | None = None,
                 vision_width: int | None = None) -> None:
        super().__init__()
        self.rule = rule
        self.self_attn = Attention(llm, model.aligner, model.attn_impl)
        self.input_layernorm = RMSNorm(llm.hidden_size, llm.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(llm.hidden_size, llm.rms_norm_eps)
        self.mlp = SwiGLU(llm.hidden_size, llm.intermediate_size)
        self.cross_attn = cross_attn  # Flamingo gated cross-attention block, or None
        if rule.from_features:
            self.visual_mlp = saisa_mlp(vision_width, llm.hidden_size)

    def forward(self, h: torch.Tensor, rows: Rows, cache=None, rank: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer's output rows and, when `rank` (> 0), FastV's ranking of the visual rows by
        the query `rank` rows from the end."""
        nv = rows.n_visual
        if self.cross_attn is not None:
            h = self.cross_attn(h, rows.visual, cache, rows.media_rows)
        if self.rule.from_features and nv:  # SAISA: the visual rows re-made from the features
            h = torch.cat([self.visual_mlp(rows.features).to(h.dtype), h[:, nv:]], dim=1)
        delta, start, probs = self.self_attn(self.input_layernorm(h), nv, rows.cos, rows.sin, self.rule, rows.mask,
                                             cache, rank)
        h = add_rows(h, delta, start)
        ffn_start = 0 if self.rule.visual_ffn else nv
        return add_rows(h, self.mlp(self.post_attention_layernorm(h[:, ffn_start:])), ffn_start), probs


@dataclass
class Rows:
    """What a layer needs besides h: the visual row count, RoPE at each row's true position,
    the mask (None: bottom-right causal), Flamingo's visual tokens and media rows, SAISA's
    vision features (B, Nv, d_vision)."""

    n_visual: int
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None = None
    visual: torch.Tensor | None = None
    media_rows: torch.Tensor | None = None
    features: torch.Tensor | None = None

    def keep_visual(self, h: torch.Tensor, probs: torch.Tensor, ratio: float) -> tuple[torch.Tensor, Rows]:
        """FastV: each sample keeps its round((1 - ratio) * Nv) visual rows of highest `probs`,
        in their original order (so at their original positions); the text rows stay."""
        b, n, nv = h.shape[0], h.shape[1], self.n_visual
        keep = max(1, round((1 - ratio) * nv))
        kept = probs.topk(keep, dim=-1).indices.sort(dim=-1).values  # (B, keep)
        index = torch.cat([kept, torch.arange(nv, n, device=h.device).expand(b, -1)], dim=1)
        mask = None if self.mask is None else _take(_take(self.mask, index, 2), index, 3)
        features = None if self.features is None else _take(self.features, kept, 1)
        return _take(h, index, 1), replace(self, n_visual=keep, cos=_take(self.cos, index, 1),
                                           sin=_take(self.sin, index, 1), mask=mask, features=features)


def _take(t: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """t's entries at index (B, M) along `dim`, per sample."""
    view = [index.shape[0]] + [1] * (t.dim() - 1)
    view[dim] = index.shape[1]
    shape = list(t.shape)
    shape[dim] = index.shape[1]
    return t.gather(dim, index.view(view).expand(shape))


class Decoder(nn.Module):
    """Embedding, layers, final norm and LM head. Parameter names follow HF Llama
    (minus the `model.` prefix) so the HF key map is a short template."""

    def __init__(self, llm: LLMConfig, model: ModelConfig, vision_width: int | None = None) -> None:
        super().__init__()
        self.cfg = llm
        self.prune_after, self.prune_ratio = model.prune_after, model.prune_ratio
        self.embed_tokens = nn.Embedding(llm.vocab_size, llm.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(llm, model, rule,
                         GatedCrossAttention(llm) if model.arch == "flamingo" and i % model.cross_every == 0 else None,
                         vision_width)
            for i, rule in enumerate(layer_rules(model, llm.num_layers))
        )
        self.norm = RMSNorm(llm.hidden_size, llm.rms_norm_eps)
        self.rotary = RotaryEmbedding(llm)
        self.lm_head = nn.Linear(llm.hidden_size, llm.vocab_size, bias=False)
        if llm.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        with_role(self, LLM)
        last = self.layers[-1].self_attn
        for name in ("aligner_v", "aligner_o"):  # zero gradient after the last layer (models/roles.py)
            if hasattr(last, name):
                with_role(getattr(last, name), IDLE)

    def new_parameter_names(self) -> list[str]:
        """Parameters no LLM checkpoint has: aligner copies, SAISA's MLPs and Flamingo blocks."""
        return [name for name, role in parameter_roles(self).items() if role in NEW]

    def init_aligner_copies(self) -> None:
        for layer in self.layers:
            layer.self_attn.copy_aligner_from_llm()

    def forward(
        self,
        h: torch.Tensor,
        n_visual: int,
        positions: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        visual: torch.Tensor | None = None,
        media_rows: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        rank_from_end: int = 1,
    ) -> torch.Tensor:
        """h (B, Nv + Nt, d) -> logits of the text rows (B, Nt, vocab).

        positions (B, Nv + Nt): true RoPE positions. `visual` (B, Nv', d): Flamingo's
        visual tokens, which are not rows of h; media_rows (B, Nt) bool: the text rows
        after the image, which may cross-attend to it (None: all). features (B, Nv, d_vision):
        the vision features SAISA's per-layer MLPs read. rank_from_end: the text row whose
        attention ranks FastV's visual tokens, counted from the end (1: the last).
        """
        h, rows = self.run_layers(h, n_visual, positions, mask, cache, visual, media_rows, features,
                                  rank_from_end)[-1]
        return self.lm_head(self.norm(h[:, rows.n_visual:]))

    def run_layers(self, h, n_visual, positions, mask=None, cache=None, visual=None, media_rows=None,
                   features=None, rank_from_end: int = 1) -> list[tuple[torch.Tensor, Rows]]:
        """(rows, their description) before the first layer and after each; FastV keeps fewer
        visual rows after layer `prune_after - 1` (at a prefill, when the rows hold an image)."""
        cos, sin = self.rotary(positions, h.dtype)
        rows = Rows(n_visual, cos, sin, mask, visual, media_rows, features)
        out = [(h, rows)]
        for i, layer in enumerate(self.layers):
            rank = rank_from_end if self.prune_after and i == self.prune_after - 1 and rows.n_visual else 0
            h, probs = layer(h, rows, None if cache is None else cache[i], rank)
            if probs is not None:
                h, rows = rows.keep_visual(h, probs, self.prune_ratio)
            out.append((h, rows))
        return out

    def hidden_states(
        self, h: torch.Tensor, n_visual: int, positions: torch.Tensor, mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Every layer's output over all rows (visual and text), for tests and probes."""
        return [h for h, _ in self.run_layers(h, n_visual, positions, mask)]
