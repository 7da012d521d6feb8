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

import torch
from torch import nn

from eelight.models.attention import CompositeAttention, SelfAttention
from eelight.models.blocks import RMSNorm, SwiGLU
from eelight.models.config import LLMConfig, ModelConfig
from eelight.models.flamingo import GatedCrossAttention
from eelight.models.kv_cache import KVCache
from eelight.models.roles import IDLE, LLM, NEW, parameter_roles, with_role
from eelight.models.rope import RotaryEmbedding


def add_rows(h: torch.Tensor, delta: torch.Tensor, start: int) -> torch.Tensor:
    """h + delta on rows `start:` of h; rows before `start` are kept as they are."""
    if start == 0:
        return h + delta
    return torch.cat([h[:, :start], h[:, start:] + delta], dim=1)


class DecoderLayer(nn.Module):
    def __init__(self, llm: LLMConfig, model: ModelConfig, cross_attn: nn.Module | None = None) -> None:
        super().__init__()
        if model.visual_attn == "self":
            self.self_attn: SelfAttention = SelfAttention(llm, model.attn_impl)
        else:
            self.self_attn = CompositeAttention(llm, model.aligner, model.attn_impl)
        self.input_layernorm = RMSNorm(llm.hidden_size, llm.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(llm.hidden_size, llm.rms_norm_eps)
        self.mlp = SwiGLU(llm.hidden_size, llm.intermediate_size)
        self.aligner_ffn = model.aligner_ffn
        self.cross_attn = cross_attn  # Flamingo gated cross-attention block, or None

    def forward(
        self,
        h: torch.Tensor,
        n_visual: int,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache=None,
        visual: torch.Tensor | None = None,
        media_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.cross_attn is not None:
            h = self.cross_attn(h, visual, cache, media_rows)
        delta, start = self.self_attn(self.input_layernorm(h), n_visual, cos, sin, mask, cache)
        h = add_rows(h, delta, start)
        ffn_start = 0 if self.aligner_ffn else n_visual
        rows = h[:, ffn_start:]
        return add_rows(h, self.mlp(self.post_attention_layernorm(rows)), ffn_start)


class Decoder(nn.Module):
    """Embedding, layers, final norm and LM head. Parameter names follow HF Llama
    (minus the `model.` prefix) so the HF key map is a short template."""

    def __init__(self, llm: LLMConfig, model: ModelConfig) -> None:
        super().__init__()
        self.cfg = llm
        self.embed_tokens = nn.Embedding(llm.vocab_size, llm.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(
                llm,
                model,
                GatedCrossAttention(llm) if model.arch == "flamingo" and i % model.cross_every == 0 else None,
            )
            for i in range(llm.num_layers)
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
        """Parameters no LLM checkpoint has: aligner copies and Flamingo blocks."""
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
    ) -> torch.Tensor:
        """h (B, Nv + Nt, d) -> logits of the text rows (B, Nt, vocab).

        positions (B, Nv + Nt): true RoPE positions. `visual` (B, Nv', d): Flamingo's
        visual tokens, which are not rows of h; media_rows (B, Nt) bool: the text rows
        after the image, which may cross-attend to it (None: all).
        """
        cos, sin = self.rotary(positions, h.dtype)
        for i, layer in enumerate(self.layers):
            h = layer(h, n_visual, cos, sin, mask, None if cache is None else cache[i], visual, media_rows)
        return self.lm_head(self.norm(h[:, n_visual:]))

    def hidden_states(
        self, h: torch.Tensor, n_visual: int, positions: torch.Tensor, mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Every layer's output over all rows (visual and text), for tests and probes."""
        cos, sin = self.rotary(positions, h.dtype)
        out = [h]
        for layer in self.layers:
            h = layer(h, n_visual, cos, sin, mask)
            out.append(h)
        return out
