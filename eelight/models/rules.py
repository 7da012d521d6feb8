"""What each decoder layer does with the visual rows: every variant as per-layer rules
(docs/DESIGN.md §1 and §8), so that EE-MLLM, LLaVA and the successors share one attention
path (`attention.Attention`) and a new variant is a few config values, not a new class.

A layer's `LayerRule` says

- `visual_queries`: the visual rows are queries of the causal attention over [I; T] (LLaVA,
  ShortV outside its layer set), or keys/values only (composite attention: EE-MLLM, ViCA,
  SAISA, ShortV inside its layer set);
- `text_sees_visual`: the text queries see the visual keys; when false (ViCA outside its
  layer set) the visual keys and values are not even computed;
- `update`: when the visual rows are not queries, how they are updated: `reuse` (the layer's
  own Wv, Wo: EE-MLLM), `fresh` (new copies), `none` (kept as they are);
- `visual_ffn`: the visual rows also pass the layer's FFN;
- `from_features`: the visual rows are first overwritten by this layer's MLP of the vision
  features (SAISA).

FastV's pruning (after layer `prune_after - 1`, keep the visual tokens the last query
attended to most) is a decoder step between layers, not a rule of one layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from eelight.models.config import ModelConfig

# ViCA's released 7B set (32 layers): text sees the visual tokens only in these layers.
VICA_7B_LAYERS = (0, 1, 7, 8, 9, 10, 11, 14)


@dataclass(frozen=True)
class LayerRule:
    visual_queries: bool
    text_sees_visual: bool = True
    update: str = "none"
    visual_ffn: bool = False
    from_features: bool = False


def vica_layers(n_layers: int) -> tuple[int, ...]:
    """ViCA's 7B layer set scaled to `n_layers`: layer l of 32 -> floor(l * n / 32), repeats
    dropped (32 layers: the released set itself; 4 layers: {0, 1}; 2 layers: {0})."""
    return tuple(sorted({layer * n_layers // 32 for layer in VICA_7B_LAYERS}))


def layer_set(spec: str, n_layers: int, key: str) -> frozenset[int]:
    """`all`, `none`, `vica` or comma-separated layer indices (negative count from the end)."""
    spec = str(spec).strip()
    if spec == "all":
        return frozenset(range(n_layers))
    if spec == "none":
        return frozenset()
    if spec == "vica":
        return frozenset(vica_layers(n_layers))
    if spec == "auto":
        raise ValueError(f"model.{key}=auto is what ShortV's calibration chooses: run `eelight shortv RUN` on a "
                         "trained LLaVA run, then evaluate that run folder with model_preset=shortv")
    try:
        layers = [int(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(f"model.{key}={spec!r} is not a layer set; use all, none, vica or indices like 0,1,3") from None
    bad = [i for i in layers if not -n_layers <= i < n_layers]
    if bad:
        raise ValueError(f"model.{key}={spec!r} names layer {bad[0]}, but the LLM has {n_layers} layers "
                         f"(0..{n_layers - 1})")
    return frozenset(i % n_layers for i in layers)


def layer_rules(cfg: ModelConfig, n_layers: int) -> list[LayerRule]:
    """The rule of each of the decoder's `n_layers` layers under the model config."""
    sees = layer_set(cfg.text_visual_layers, n_layers, "text_visual_layers")
    kv_only = layer_set(cfg.kv_only_layers, n_layers, "kv_only_layers")
    if cfg.prune_after >= n_layers:
        raise ValueError(f"model.prune_after={cfg.prune_after} must be below the LLM's {n_layers} layers "
                         "(FastV prunes after layer prune_after - 1; 0 = off)")
    rules = []
    for layer in range(n_layers):
        if cfg.visual_attn == "self" and layer not in kv_only:
            rules.append(LayerRule(visual_queries=True, visual_ffn=cfg.aligner_ffn))
        elif cfg.visual_attn == "self":  # ShortV: visual rows frozen here, keys/values only
            rules.append(LayerRule(visual_queries=False))
        else:
            rules.append(LayerRule(visual_queries=False, text_sees_visual=layer in sees,
                                   update="none" if cfg.aligner == "mlp" else cfg.aligner,
                                   visual_ffn=cfg.aligner_ffn, from_features=cfg.aligner == "mlp"))
    return rules
