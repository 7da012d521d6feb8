"""The assembled multimodal LLM: image -> vision tower -> projector -> visual tokens
(rows of the decoder for arch=decoder, standing where the `<image>` marker was,
by default before the text: see `layout`; cross-attended for arch=flamingo) ->
decoder -> text logits. `build_mllm` builds one from a config, loading local HF
folders; `load_llava` builds one from a `transformers` LLaVA folder.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from eelight.models import hf_loading, layout
from eelight.models.config import LLMConfig, ModelConfig, model_config
from eelight.models.decoder import Decoder
from eelight.models.kv_cache import KVCache
from eelight.models.projector import Projector
from eelight.models.roles import PROJECTOR, VISION, with_role
from eelight.models.vision import build_tower, pool_grid

IGNORE_INDEX = -100


@dataclass
class MLLMOutput:
    logits: torch.Tensor  # (B, Nt, vocab): text rows only
    loss: torch.Tensor | None = None


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits[:, t] against labels[:, t + 1] over supervised tokens."""
    targets = labels[:, 1:]
    if not (targets != IGNORE_INDEX).any():
        raise ValueError(
            "labels have no supervised token (all -100 after the shift): the batch's answers were "
            "masked or truncated away; the data pipeline must skip such samples"
        )
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


def _image_offset(image_offset, visual, text_valid, b: int, nt: int, device) -> torch.Tensor | None:
    """(B,) real text tokens before the image, or None when the image comes first everywhere."""
    if image_offset is None or visual is None:
        return None
    offset = layout.check_offsets(image_offset, text_valid, b, nt, device)
    return offset if bool((offset > 0).any()) else None


def _key_valid(text_valid, b: int, nt: int, n_keys: int, device) -> torch.Tensor:
    """(B, n_keys) True for real keys: the keys are [visual; text so far], and only text pads."""
    valid = text_valid if text_valid is not None else torch.ones(b, nt, dtype=torch.bool, device=device)
    return torch.cat([valid.new_ones(b, n_keys - valid.shape[1]), valid], dim=1)


def _padding_mask(text_valid, n_keys: int, n_rows: int) -> torch.Tensor | None:
    """The bottom-right causal mask with padded keys masked; None when nothing is padded."""
    if text_valid is None or bool(text_valid.all()):
        return None
    return layout.attention_mask(_key_valid(text_valid, text_valid.shape[0], 0, n_keys, text_valid.device), n_rows)


class MLLM(nn.Module):
    def __init__(self, cfg: ModelConfig, llm: LLMConfig, vision_config, processor=None) -> None:
        super().__init__()
        self.cfg = replace(cfg, llm=llm)
        self.vision = with_role(build_tower(cfg.vision, vision_config, processor), VISION)
        self.projector = with_role(Projector(self.vision.hidden_size, llm.hidden_size, cfg.projector_depth), PROJECTOR)
        self.decoder = Decoder(llm, cfg, self.vision.hidden_size)
        self._pooled_tokens = self.vision.num_tokens // cfg.visual_pool**2
        if cfg.visual_pool > 1:  # fail at build time, not at the first batch
            pool_grid(torch.zeros(1, self.vision.num_tokens, 1), cfg.visual_pool)

    def compile_decoder(self) -> None:
        """model.compile=true: `torch.compile` the decoder's forward, its whole layer stack as
        one graph (no graph breaks: tests/test_compile.py), in place, so parameter names and
        checkpoints do not change. Does nothing when model.compile is false."""
        if self.cfg.compile:
            mode = None if self.cfg.compile_mode == "default" else self.cfg.compile_mode
            self.decoder.compile(mode=mode)

    @property
    def num_visual_tokens(self) -> int:
        return self._pooled_tokens

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> visual tokens (B, Nv, d), the patch grid pooled by `visual_pool`.
        A `blind` model sees a black image whatever it is given."""
        return self.projector(self.vision_features(pixel_values))

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> the tower's features (B, Nv, d_vision), pooled: the projector's input."""
        if self.cfg.blind:
            pixel_values = torch.zeros_like(pixel_values)
        return pool_grid(self.vision(pixel_values), self.cfg.visual_pool)

    def _visual(self, pixel_values, visual_tokens, features) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(visual tokens, the features SAISA's layers read, else None) from the images or as given."""
        saisa = self.cfg.aligner == "mlp"
        if visual_tokens is None and pixel_values is not None:
            features = self.vision_features(pixel_values)
            return self.projector(features), features if saisa else None
        if saisa and visual_tokens is not None and features is None:
            raise ValueError("model.aligner=mlp (SAISA) re-makes the visual rows from the vision features in every "
                             "layer: pass pixel_values (or visual_features with visual_tokens)")
        return visual_tokens, features if saisa else None

    def _check_lengths(self, n_visual: int, n_text: int) -> None:
        if n_text == 0:
            raise ValueError("input_ids is empty: every sample needs at least one text token (e.g. BOS)")
        limit = self.cfg.llm.max_positions
        if n_visual + n_text > limit:
            raise ValueError(
                f"{n_visual} visual + {n_text} text tokens exceed the LLM's context of {limit} positions; "
                "shorten the text (data.max_length) or use fewer visual tokens (smaller image/larger patch)"
            )

    def _run(
        self,
        input_ids: torch.Tensor,
        visual: torch.Tensor | None,
        text_valid: torch.Tensor | None,
        cache: KVCache | None = None,
        start: torch.Tensor | None = None,
        image_offset: torch.Tensor | int | None = None,
        features: torch.Tensor | None = None,
        rank_from_end: int = 1,
        question_end: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One pass of the LLM over new text tokens: the prefill (start None) or a cached
        decoding step. visual (B, Nv, d) or None; text_valid (B, L_text_so_far) bool or None
        (no padding); start (B,): RoPE position of the first new token (decoding steps come
        after everything); image_offset: real text tokens before the image (`layout`), None = 0."""
        if self.cfg.arch == "flamingo":
            return self._run_flamingo(input_ids, visual, text_valid, cache, start, image_offset)
        return self._run_rows(input_ids, visual, text_valid, cache, start, image_offset, features, rank_from_end,
                              question_end)

    def _run_rows(self, input_ids, visual, text_valid, cache, start, image_offset, features=None,
                  rank_from_end: int = 1, question_end=None) -> torch.Tensor:
        """arch=decoder: the visual tokens are rows of the LLM, h = [h_I; h_T]. At a cached
        decoding step `visual` is None: its keys and values are in the cache."""
        b, nt = input_ids.shape
        nv = 0 if visual is None else visual.shape[1]
        n_keys = (0 if cache is None else cache.length) + nv + nt
        self._check_lengths(n_keys - nt, nt)
        h = self.decoder.embed_tokens(input_ids)
        if visual is not None:
            h = torch.cat([visual.to(h.dtype), h], dim=1)
        if start is not None:
            positions = start[:, None] + torch.arange(nt, device=h.device)
            return self.decoder(h, nv, positions, _padding_mask(text_valid, n_keys, nv + nt), cache)
        offset = _image_offset(image_offset, visual, text_valid, b, nt, h.device)
        ranks = layout.text_ranks(text_valid, b, nt, h.device)
        positions = layout.sequence_positions(nv, ranks, offset)
        reads = self.cfg.visual_reads_question and nv > 0 and question_end is not None
        if offset is None and not reads:
            mask = _padding_mask(text_valid, n_keys, nv + nt)
        else:  # the image mid-text, or AKI: the dense mask over true positions
            mask = layout.position_mask(positions, _key_valid(text_valid, b, nt, n_keys, h.device))
        if reads:
            at = torch.zeros(b, dtype=torch.long, device=h.device) if offset is None else offset
            mask = layout.with_question(mask, ranks, at, torch.as_tensor(question_end).expand(b), text_valid, nv)
        return self.decoder(h, nv, positions, mask, cache, features=features, rank_from_end=rank_from_end)

    def _run_flamingo(self, input_ids, visual, text_valid, cache, start, image_offset) -> torch.Tensor:
        """arch=flamingo: the LLM's rows are text only; its gated cross-attention blocks attend
        to `visual` (at cached decoding steps, to the visual K/V cached at the prefill)."""
        b, nt = input_ids.shape
        n_keys = (0 if cache is None else cache.length) + nt
        self._check_lengths(n_keys - nt, nt)
        h = self.decoder.embed_tokens(input_ids)
        mask = _padding_mask(text_valid, n_keys, nt)
        if start is not None:
            positions = start[:, None] + torch.arange(nt, device=h.device)
            return self.decoder(h, 0, positions, mask, cache, visual)
        ranks = layout.text_ranks(text_valid, b, nt, h.device)  # the RoPE positions: text only
        offset = _image_offset(image_offset, visual, text_valid, b, nt, h.device)
        media_rows = None if offset is None else ranks >= offset[:, None]  # text before the image sees none
        return self.decoder(h, 0, ranks, mask, cache, visual, media_rows)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        visual_tokens: torch.Tensor | None = None,
        image_offset: torch.Tensor | int | None = None,
        visual_features: torch.Tensor | None = None,
        question_end: torch.Tensor | int | None = None,
    ) -> MLLMOutput:
        """input_ids (B, Nt); pixel_values (B, C, S, S) or precomputed visual_tokens
        (B, Nv, d); labels (B, Nt) with -100 where no loss; attention_mask (B, Nt)
        1 for real tokens (left padding); image_offset (B,) real text tokens before the
        image, where its `<image>` marker stood (None: the image comes first); question_end (B,)
        real text tokens before the first assistant turn (AKI's image tokens read the question up
        to there; None: they do not)
        Returns text logits and the next-token loss."""
        visual_tokens, features = self._visual(pixel_values, visual_tokens, visual_features)
        valid = None if attention_mask is None else attention_mask.bool()
        logits = self._run(input_ids, visual_tokens, valid, image_offset=image_offset, features=features,
                           question_end=question_end)
        loss = None if labels is None else next_token_loss(logits, labels)
        return MLLMOutput(logits=logits, loss=loss)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 16,
        eos_token_id: int | None = None,
        use_cache: bool = True,
        image_offset: torch.Tensor | int | None = None,
        question_end: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Greedy decoding; returns the new tokens (B, <= max_new_tokens). After EOS a row
        keeps emitting EOS. image_offset as in `forward` (new tokens come after the image).
        With a cache, new text tokens decode against the cached visual and text K/V (and
        Flamingo's cached cross-attention K/V)."""
        visual, features = self._visual(pixel_values, None, None)
        b = input_ids.shape[0]
        valid = (
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        cache = KVCache(len(self.decoder.layers)) if use_cache else None
        ids, out = input_ids, []
        done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        logits = self._run(ids, visual, valid, cache, image_offset=image_offset, features=features,
                           question_end=question_end)
        nv = visual.shape[1] if visual is not None and self.cfg.arch == "decoder" else 0
        next_pos = nv + valid.long().sum(-1)  # RoPE position of the next token
        for step in range(max_new_tokens):
            token = logits[:, -1].argmax(-1)
            if eos_token_id is not None:
                token = torch.where(done, torch.full_like(token, eos_token_id), token)
                done |= token == eos_token_id
            out.append(token)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            valid = torch.cat([valid, valid.new_ones(b, 1)], dim=1)
            if cache is None:
                ids = torch.cat([ids, token[:, None]], dim=1)
                # FastV ranks by the prompt's last token, as the cached prefill did
                logits = self._run(ids, visual, valid, image_offset=image_offset, features=features,
                                   rank_from_end=len(out) + 1, question_end=question_end)
            else:
                vis = visual if self.cfg.arch == "flamingo" else None  # decoder: visual K/V are cached
                logits = self._run(token[:, None], vis, valid, cache, start=next_pos)
            next_pos = next_pos + 1
        return torch.stack(out, dim=1)


def build_mllm(model_cfg: ModelConfig | hf_loading.ResolvedModel) -> MLLM:
    """Build the model; load the LLM / vision tower from their local HF folders when set. A
    `ResolvedModel` (see `hf_loading.resolve`) is built without reading its folders' configs again."""
    resolved = hf_loading.resolve(model_cfg)
    cfg = resolved.cfg
    model = MLLM(cfg, cfg.llm, resolved.vision_hf)
    if cfg.llm.path:
        hf_loading.load_llm_weights(model.decoder, cfg.llm.path, resolved.family)
    if cfg.vision.path:
        hf_loading.load_vision_weights(model.vision, cfg.vision)
    if cfg.aligner == "fresh" and cfg.aligner_init == "copy":
        model.decoder.init_aligner_copies()
    return model


def load_llava(folder: str, preset: str = "llava") -> MLLM:
    """A `transformers` LLaVA folder (`LlavaForConditionalGeneration` layout) as our model,
    with the preset's variant (e.g. `ee_mllm_f` evaluates it with composite attention)."""
    cfg, vision_config = hf_loading.llava_model_config(folder, model_config(preset))
    model = MLLM(cfg, cfg.llm, vision_config)
    hf_loading.load_llava_weights(model, folder)
    if cfg.aligner == "fresh" and cfg.aligner_init == "copy":
        model.decoder.init_aligner_copies()
    return model
