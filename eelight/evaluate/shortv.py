"""ShortV's calibration (docs/DESIGN.md §8): which layers of a trained LLaVA model may leave its
visual tokens frozen (keys and values only, no query, no update).

For each layer alone, freeze it and take the KL divergence of the last token's next-token
distribution from the unfrozen model's, KL(p_orig || p_frozen), averaged over calibration
samples: the run's own training shards, never the benchmarks it is scored on. The layers with
the smallest scores are frozen (ShortV froze 19 of 32 at 7B; scaled to the depth by default).

`eelight shortv RUN` writes RUN/shortv.json (scores, the chosen layers, the samples used);
`model.kv_only_layers=auto` (the `shortv` preset) on that run folder reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eelight.errors import ConfigError


def default_freeze(n_layers: int) -> int:
    """ShortV's 19 of 32 layers, scaled to the depth (at least one)."""
    return max(1, round(19 * n_layers / 32))


def layer_scores(model: Any, batches) -> tuple[list[float], int]:
    """(each layer's mean KL(p_orig || p_frozen) of the last token, samples seen)."""
    import torch
    import torch.nn.functional as F

    from eelight.models.rules import LayerRule

    layers = model.decoder.layers
    totals, seen = [0.0] * len(layers), 0
    with torch.no_grad():
        for batch in batches:
            def last_logp(batch=batch):
                logits = model(batch["input_ids"], batch["pixel_values"], image_offset=batch["image_offset"],
                               question_end=batch.get("question_end")).logits
                return F.log_softmax(logits[:, -1].float(), dim=-1)

            ref = last_logp()
            for i, layer in enumerate(layers):
                kept, layer.rule = layer.rule, LayerRule(visual_queries=False)  # ShortV's frozen layer
                try:
                    totals[i] += F.kl_div(last_logp(), ref, log_target=True, reduction="sum").item()
                finally:
                    layer.rule = kept
            seen += batch["input_ids"].shape[0]
    if not seen:
        raise ConfigError("no calibration sample could be read from the run's training shards")
    return [t / seen for t in totals], seen


def calibrate(run_dir: str | Path, samples: int = 40, freeze: int | None = None) -> dict[str, Any]:
    """Score every layer of the LLaVA run in `run_dir` on `samples` of its training samples (one
    at a time: no padding), choose the `freeze` lowest, write RUN/shortv.json and return it."""
    from eelight.data.loader import make_pipeline
    from eelight.evaluate.target import SHORTV_FILE, load_target

    target = load_target(str(run_dir), [])
    cfg = target.run_cfg
    if cfg is None or cfg.model.visual_attn != "self" or cfg.model.kv_only_layers != "none":
        raise ConfigError(f"{run_dir}: ShortV calibrates a LLaVA training run (model.visual_attn=self, every layer "
                          "as trained); pass runs/<name>/<stage> of one")
    n_layers = len(target.model.decoder.layers)
    freeze = default_freeze(n_layers) if freeze is None else freeze
    if not 1 <= freeze < n_layers:
        raise ConfigError(f"--freeze {freeze}: choose 1..{n_layers - 1} of the model's {n_layers} layers")
    data = cfg.data
    batches = make_pipeline(data.train_shards, stage=cfg.stage, tokenizer=target.tokenizer, processor=target.processor,
                            template_name=data.template, system_prompt=data.system_prompt,
                            image_placement=data.image_placement, batch_size=1, max_length=data.max_length,
                            max_batches=samples, split_by_node=False)
    scores, seen = layer_scores(target.model, batches)
    layers = sorted(sorted(range(n_layers), key=lambda i: scores[i])[:freeze])
    record = {"layers": layers, "scores": scores, "freeze": freeze, "samples": seen, "step": target.step,
              "kv_only_layers": ",".join(map(str, layers))}
    (Path(run_dir) / SHORTV_FILE).write_text(json.dumps(record, indent=1))
    return record

