"""Typed model configuration: the variant axes of docs/DESIGN.md §1 and the named presets.

A model is `arch` (decoder | flamingo) plus the four axes that say how visual
tokens move through a decoder layer (`visual_attn`, `aligner`, `aligner_ffn`,
`aligner_init`) and the projector depth. Combinations without a defined meaning
are rejected in `__post_init__`, which OmegaConf's `to_object` also runs, so a
bad YAML or command-line override fails when the config is built.

Presets (litgpt / prismatic style: each paper point is a named config that
overrides 1-3 fields) are looked up by exact name with `model_config(name)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from eelight.config_rules import above, at_least, between, check_fields, one_of

ARCHS = ("decoder", "flamingo")
VISUAL_ATTNS = ("none", "self")
ALIGNERS = ("reuse", "fresh", "none", "mlp")
ALIGNER_INITS = ("copy", "random")
ATTN_IMPLS = ("auto", "sdpa", "flash", "flex")  # flex: FlexAttention block masks (models/flex.py)
FLEX_NO_CPU_BACKWARD = ("model.attn_impl=flex has no backward on CPU (torch's FlexAttention is inference-only "
                        "there); train with model.attn_impl=auto and evaluate with flex, or train on a GPU")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
ROPE_TYPES = ("default", "linear", "llama3")
VISION_KINDS = ("clip", "siglip", "dinov2", "dinosiglip")  # dinosiglip: DINOv2 + SigLIP patch features fused
FEATURE_SELECTS = ("patch", "full")

# (arch, visual_attn, aligner, aligner_ffn) combinations that have a meaning.
VALID_VARIANTS: tuple[tuple[str, str, str, bool], ...] = (
    ("decoder", "none", "reuse", False),  # EE-MLLM
    ("decoder", "none", "reuse", True),  # EE-MLLM-F / composite attention + visual FFN
    ("decoder", "none", "fresh", False),  # no weight reuse: new per-layer Wv', Wo'
    ("decoder", "none", "fresh", True),
    ("decoder", "none", "none", False),  # visual tokens stay the projector output
    ("decoder", "self", "reuse", True),  # LLaVA: plain decoder over [I; T]
    ("decoder", "self", "reuse", False),  # LLaVA attention, visual tokens skip the FFN
    ("decoder", "none", "mlp", False),  # SAISA: visual rows re-made each layer by an MLP of the features
    ("flamingo", "none", "none", False),  # LLM sees text only; gated cross-attention
)


@dataclass
class LLMConfig:
    """A Llama-family decoder. With `path` set, the sizes come from `path/config.json`."""

    path: str | None = None
    vocab_size: int = at_least(1, 128)
    hidden_size: int = at_least(1, 64)
    intermediate_size: int = at_least(1, 160)
    num_layers: int = at_least(1, 2)
    num_heads: int = at_least(1, 4)
    num_kv_heads: int = at_least(1, 2)
    head_dim: int | None = at_least(1, None)  # None: hidden_size // num_heads
    rms_norm_eps: float = above(0.0, 1e-6)
    max_positions: int = at_least(1, 2048)
    rope_theta: float = above(0.0, 10000.0)
    rope_type: str = one_of(ROPE_TYPES, "default")
    rope_factor: float = above(0.0, 1.0)
    rope_low_freq_factor: float = above(0.0, 1.0)  # llama3 scaling only
    rope_high_freq_factor: float = above(0.0, 4.0)  # llama3 scaling only
    rope_original_max_positions: int = at_least(1, 8192)  # llama3 scaling only
    qkv_bias: bool = False  # Qwen2 has biases on q, k, v
    qk_norm: bool = False  # Qwen3: RMSNorm over each head's queries and keys before RoPE
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "model.llm")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.llm.num_heads={self.num_heads} is not a multiple of "
                f"model.llm.num_kv_heads={self.num_kv_heads}; grouped-query attention needs it to be"
            )
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.llm.hidden_size={self.hidden_size} is not divisible by model.llm.num_heads="
                f"{self.num_heads}; set llm.head_dim explicitly"
            )

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


@dataclass
class VisionConfig:
    """A CLIP, SigLIP or DINOv2 vision tower, or DINOv2 + SigLIP fused (`dinosiglip`: `path` is the
    DINOv2 folder, `siglip_path` the SigLIP one). With paths set, the sizes come from the HF folders;
    without, a random tower is built from these sizes (a fused one: both towers at these sizes)."""

    path: str | None = None
    siglip_path: str | None = None  # dinosiglip only: the SigLIP folder (`path` is the DINOv2 one)
    registers: int = at_least(0, 0)  # dinov2 / dinosiglip built from sizes: DINOv2's register tokens
    kind: str = one_of(VISION_KINDS, "clip")
    image_size: int = at_least(1, 32)
    patch_size: int = at_least(1, 8)
    hidden_size: int = at_least(1, 32)
    intermediate_size: int = at_least(1, 64)
    num_layers: int = at_least(1, 2)
    num_heads: int = at_least(1, 2)
    feature_layer: int = -2  # LLaVA takes the penultimate layer's hidden states
    feature_select: str = one_of(FEATURE_SELECTS, "patch")  # patch: drop CLS (LLaVA "default"); full: keep it

    def __post_init__(self) -> None:
        check_fields(self, "model.vision")
        if self.kind == "dinosiglip" and bool(self.path) != bool(self.siglip_path):
            raise ValueError("model.vision.kind=dinosiglip needs both model.vision.path (the DINOv2 folder) and "
                             "model.vision.siglip_path (the SigLIP folder), or neither (random towers)")
        if self.siglip_path and self.kind != "dinosiglip":
            raise ValueError(f"model.vision.siglip_path is for kind=dinosiglip (got kind={self.kind}); unset it")
        if self.kind == "dinosiglip" and self.feature_select == "full":
            raise ValueError("model.vision.kind=dinosiglip fuses patch features (the two towers' CLS tokens differ); "
                             "use feature_select=patch")
        # With `path`, the sizes are the HF folder's, known once it is read (`resolve_model`).
        if self.path is None and not -self.num_layers - 1 <= self.feature_layer <= self.num_layers:
            raise ValueError(f"model.vision.feature_layer={self.feature_layer} is outside the tower's "
                             f"{self.num_layers + 1} hidden states; use -{self.num_layers + 1}..{self.num_layers} (-2: the "
                             "penultimate layer)")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"model.vision.image_size={self.image_size} is not a multiple of "
                f"model.vision.patch_size={self.patch_size}"
            )


@dataclass
class ModelConfig:
    arch: str = one_of(ARCHS, "decoder")
    visual_attn: str = one_of(VISUAL_ATTNS, "none")
    aligner: str = one_of(ALIGNERS, "reuse")
    aligner_init: str = one_of(ALIGNER_INITS, "copy")
    aligner_ffn: bool = False
    projector_depth: int = at_least(1, 2)
    visual_pool: int = at_least(1, 1)  # k: average-pool the k x k patch grid (k**2 times fewer visual tokens)
    blind: bool = False  # every image replaced by a black one: same tokens and compute, no image information
    cross_every: int = at_least(1, 1)  # flamingo: a gated cross-attention block before every k-th layer
    attn_impl: str = one_of(ATTN_IMPLS, "auto")  # auto: flash-attn on CUDA when installed, else SDPA
    compile: bool = False  # torch.compile the decoder's layer stack (inductor; CPU and CUDA)
    compile_mode: str = one_of(COMPILE_MODES, "default")
    # The successors (docs/DESIGN.md §8) as per-layer rules (models/rules.py):
    text_visual_layers: str = "all"  # ViCA: layers where text sees the visual tokens (all | vica | 0,1,3)
    kv_only_layers: str = "none"  # ShortV: layers where visual rows are keys/values only (none | 0,1,3)
    prune_after: int = at_least(0, 0)  # FastV: after layer K-1 keep the visual tokens the last query saw most (0: off)
    prune_ratio: float = between(0.0, 1.0, 0.5, below_hi=True)  # FastV: the fraction of visual tokens dropped
    visual_reads_question: bool = False  # AKI: image rows also see the question after them (LLaVA only)  # torch.compile mode: default / reduce-overhead (CUDA graphs) / max-autotune
    llm: LLMConfig = field(default_factory=LLMConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)

    def __post_init__(self) -> None:
        check_fields(self, "model")
        variant = (self.arch, self.visual_attn, self.aligner, bool(self.aligner_ffn))
        if variant not in VALID_VARIANTS:
            valid = "; ".join(
                f"arch={a} visual_attn={v} aligner={al} aligner_ffn={str(f).lower()}"
                for a, v, al, f in VALID_VARIANTS
            )
            raise ValueError(
                f"model variant arch={self.arch} visual_attn={self.visual_attn} "
                f"aligner={self.aligner} aligner_ffn={str(self.aligner_ffn).lower()} "
                f"has no defined meaning; valid combinations are: {valid}"
            )
        self._check_successors()
        if self.aligner_init != "copy" and self.aligner != "fresh":
            raise ValueError(
                f"model.aligner_init={self.aligner_init!r} only applies to model.aligner=fresh "
                f"(got aligner={self.aligner!r}); leave aligner_init=copy"
            )


    def _check_successors(self) -> None:
        """ViCA's layer set needs composite attention with no visual update; ShortV's a LLaVA
        model; FastV visual rows (docs/DESIGN.md §8). Layer indices are checked at build time."""
        for key, words in (("text_visual_layers", ("all", "vica")), ("kv_only_layers", ("none", "auto"))):
            value = str(getattr(self, key))
            if value not in words and not re.fullmatch(r"-?\d+(,-?\d+)*", value):
                raise ValueError(f"model.{key}={value!r} is not a layer set; use {' | '.join(words)} or "
                                 "layer indices like 0,1,3")
        if self.text_visual_layers != "all" and (self.visual_attn, self.aligner, self.aligner_ffn) != (
                "none", "none", False):
            raise ValueError("model.text_visual_layers (ViCA) needs visual_attn=none aligner=none aligner_ffn=false "
                             "(visual tokens never updated); use model_preset=vica")
        if self.kv_only_layers != "none" and (self.arch, self.visual_attn) != ("decoder", "self"):
            raise ValueError("model.kv_only_layers (ShortV) applies to a LLaVA model (visual_attn=self); "
                             "use model_preset=llava with it")
        if self.visual_reads_question and (self.arch, self.visual_attn) != ("decoder", "self"):
            raise ValueError("model.visual_reads_question (AKI) needs visual rows that query (visual_attn=self); "
                             "use model_preset=aki")
        if self.prune_after and self.arch != "decoder":
            raise ValueError("model.prune_after (FastV) prunes visual rows of the decoder; arch=flamingo has none")


# Each preset overrides a few top-level fields of ModelConfig.
PRESETS: dict[str, dict[str, Any]] = {
    "ee_mllm": {},
    "llava": {"visual_attn": "self", "aligner_ffn": True},
    # EE-MLLM-F: the LLaVA checkpoint (same parameters) evaluated with composite attention.
    "ee_mllm_f": {"visual_attn": "none", "aligner_ffn": True},
    "flamingo": {"arch": "flamingo", "aligner": "none"},
    "ee_mllm_fresh": {"aligner": "fresh"},
    "ee_mllm_fresh_random": {"aligner": "fresh", "aligner_init": "random"},
    "ee_mllm_no_aligner": {"aligner": "none"},
    "llava_no_ffn": {"visual_attn": "self", "aligner_ffn": False},
    "ee_mllm_proj1": {"projector_depth": 1},
    "ee_mllm_proj3": {"projector_depth": 3},
    # 2x2 average pooling of the patch grid: 4x fewer visual tokens (a study's positive control).
    "ee_mllm_pool2": {"visual_pool": 2},
    # The question-only baseline of VQA studies: a control that must lose wherever the image matters.
    "ee_mllm_blind": {"blind": True},
    # The successors (docs/DESIGN.md §8).
    "vica": {"aligner": "none", "text_visual_layers": "vica"},  # text sees visual tokens in a few layers
    "saisa": {"aligner": "mlp"},  # a per-layer MLP of the vision features replaces the visual update
    # Training-free on a LLaVA checkpoint: FastV keeps half (r75: a quarter) of the visual tokens after layer 1.
    "fastv": {"visual_attn": "self", "aligner_ffn": True, "prune_after": 2, "prune_ratio": 0.5},
    "fastv_r75": {"visual_attn": "self", "aligner_ffn": True, "prune_after": 2, "prune_ratio": 0.75},
    # ShortV on a LLaVA run: the layers its calibration chose (`eelight shortv RUN`) leave visual rows frozen.
    "shortv": {"visual_attn": "self", "aligner_ffn": True, "kv_only_layers": "auto"},
    # LLaVA whose image tokens also read the question (text after the image, before the first answer).
    "aki": {"visual_attn": "self", "aligner_ffn": True, "visual_reads_question": True},
}


def portable_config(cfg: ModelConfig) -> ModelConfig:
    """The model config without local paths (sizes stay resolved): what an export folder keeps."""
    return replace(cfg, llm=replace(cfg.llm, path=None), vision=replace(cfg.vision, path=None, siglip_path=None))


def model_config(preset: str, **overrides: Any) -> ModelConfig:
    """The named preset (exact name), with top-level fields overridden."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r} in model_preset; presets are {sorted(PRESETS)}")
    known = {f.name for f in fields(ModelConfig)}
    for key in overrides:
        if key not in known:
            raise ValueError(f"model.{key} is not a model config field; fields are {sorted(known)}")
    return replace(ModelConfig(), **{**PRESETS[preset], **overrides})


VARIANT_FIELDS = tuple(sorted({k for p in PRESETS.values() for k in p}))  # what a preset may set


def preset_overrides(name: str) -> list[str]:
    """`model_preset=NAME` as model-config dot-list overrides: every field some preset sets, at
    NAME's value, so a preset applied over another model's config changes exactly the variant."""
    cfg = model_config(name)
    return [f"{k}={str(getattr(cfg, k)).lower() if isinstance(getattr(cfg, k), bool) else getattr(cfg, k)}"
            for k in VARIANT_FIELDS]
