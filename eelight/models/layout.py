"""Where the visual block stands in the sequence: the `<image>` marker (issue 4).

The sequence a sample means is `T[:m], I, T[m:]`: the visual tokens I stand
where the marker was, after the first m text tokens (`image_offset = m`;
m = 0 is docs/DESIGN.md's [I; T], the default). The decoder's rows stay `[I; T]`
whatever m is: attention sees the order only through the RoPE positions and
the causal mask, so each row gets its true position

    visual token i  -> m + i
    text token r    -> r            (r < m: before the image)
                    -> r + Nv       (r >= m: after it)

and, when some m > 0, a dense mask over positions replaces the bottom-right
causal one: row q sees key k iff pos(k) <= pos(q) and k is not padding. So a
text token before the image sees no visual key; with visual self-attention
(LLaVA) a visual row sees the text before it; composite attention (EE) has no
visual queries and its aligner is position-free, so only the text rows change.
`r` counts real tokens (left padding excluded). Generation appends tokens
after everything, so cached decoding steps need no position mask.
"""

from __future__ import annotations

import torch


def attention_mask(key_valid: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Dense bottom-right causal mask with padded keys masked: (B, 1, n_rows, Lk) bool.

    key_valid (B, Lk): True for real keys. The query rows are the last n_rows keys.
    A row always sees itself, so a padding row never has an empty softmax (NaN).
    """
    lk = key_valid.shape[1]
    rows = torch.arange(lk - n_rows, lk, device=key_valid.device)[:, None]
    cols = torch.arange(lk, device=key_valid.device)[None, :]
    allowed = (cols <= rows) & key_valid[:, None, :]
    return (allowed | (cols == rows))[:, None]


def position_mask(positions: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """Causal mask over true positions: (B, 1, N, N) bool, row q sees key k iff
    pos(k) <= pos(q) and k is real. A row always sees itself (no empty softmax)."""
    allowed = (positions[:, None, :] <= positions[:, :, None]) & key_valid[:, None, :]
    return (allowed | torch.eye(positions.shape[1], dtype=torch.bool, device=positions.device))[:, None]


def with_question(mask: torch.Tensor, ranks: torch.Tensor, offset: torch.Tensor, question_end: torch.Tensor,
                  text_valid: torch.Tensor | None, n_visual: int) -> torch.Tensor:
    """AKI: the visual rows of a dense (B, 1, N, N) mask over rows [I; T] also see the text after
    the image up to, not including, the first assistant turn: ranks offset..question_end - 1."""
    reads = (ranks >= offset[:, None]) & (ranks < question_end.to(ranks.device)[:, None])
    if text_valid is not None:
        reads &= text_valid
    mask = mask.clone()
    mask[:, 0, :n_visual, n_visual:] |= reads[:, None, :]
    return mask


def text_ranks(text_valid: torch.Tensor | None, b: int, nt: int, device: torch.device) -> torch.Tensor:
    """(B, Nt) index of each text row among its sample's real tokens (left padding -> 0)."""
    if text_valid is None:
        return torch.arange(nt, device=device).expand(b, nt)
    return (text_valid.long().cumsum(-1) - 1).clamp(min=0)


def check_offsets(image_offset: torch.Tensor | int, text_valid: torch.Tensor | None, b: int, nt: int,
                  device: torch.device) -> torch.Tensor:
    """image_offset as a (B,) long tensor, each within 0..(real text tokens of its sample)."""
    offset = torch.as_tensor(image_offset, device=device).long()
    if offset.dim() == 0:
        offset = offset.expand(b)
    if offset.shape != (b,):
        raise ValueError(f"image_offset has shape {tuple(offset.shape)}; expected ({b},): one offset per sample")
    n_real = torch.full((b,), nt, device=device) if text_valid is None else text_valid.long().sum(-1)
    bad = (offset < 0) | (offset > n_real)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"image_offset[{i}]={int(offset[i])} is outside 0..{int(n_real[i])} (the sample's text tokens): "
            "it counts the real text tokens before the image, left padding excluded"
        )
    return offset


def sequence_positions(n_visual: int, ranks: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """(B, Nv + Nt) RoPE positions of the rows [I; T] with the image after `offset` text tokens."""
    b = ranks.shape[0]
    if offset is None:
        offset = torch.zeros(b, dtype=torch.long, device=ranks.device)
    visual = offset[:, None] + torch.arange(n_visual, device=ranks.device)
    text = ranks + n_visual * (ranks >= offset[:, None])
    return torch.cat([visual, text], dim=1)
