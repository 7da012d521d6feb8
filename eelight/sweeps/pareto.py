"""Who buys accuracy with compute best: each variant's objective at the largest data size
against its forward FLOPs per sample (the FLOP counter's, at the study's text length), and the
Pareto front: the variants no other beats on both (as accurate or more for as few FLOPs or
fewer, better on one). Training-free variants (`sweeps/training_free.py`) are rows of their
own here, at their own FLOPs."""

from __future__ import annotations

from typing import Any


def training_free_rows(trial: Any, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One report row per training-free variant scored on `trial`'s weights (`base`: its row)."""
    rows = []
    for variant, s in trial.user_attrs.get("training_free", {}).items():
        kept = {k: v for k, v in base.items() if not k.startswith(("metric.", "param."))}
        rows.append({**kept, "variant": variant, "objective": s["value"], "samples_per_s": None,
                     "gflops_per_sample": s["flops_per_sample"] / 1e9, "visual_tokens": s.get("visual_tokens"),
                     "train_seconds": None, "training_free_on": base["variant"],
                     **{f"metric.{k}": v for k, v in s["metrics"].items()}})
    return rows


def points(study: Any) -> dict[str, tuple[float, Any]]:
    """variant -> (forward GFLOPs per sample, its interval at the largest data size)."""
    size = study.sizes[-1]
    out = {}
    for v in study.variants:
        interval = study.interval(v, size)
        gflops = [r["gflops_per_sample"] for r in study.rows
                  if r["variant"] == v and r["data_size"] == size and r["gflops_per_sample"] is not None]
        if interval is not None and gflops:
            out[v] = (gflops[0], interval)
    return out


def front(pts: dict[str, tuple[float, Any]]) -> list[str]:
    """The variants on the Pareto front (means compared), cheapest first."""
    def beaten(v: str) -> bool:
        g, i = pts[v]
        return any(g2 <= g and i2.mean >= i.mean and (g2 < g or i2.mean > i.mean)
                   for w, (g2, i2) in pts.items() if w != v)
    return sorted((v for v in pts if not beaten(v)), key=lambda v: pts[v][0])


def markdown_lines(study: Any, fmt: Any) -> list[str]:
    pts = points(study)
    if len(pts) < 2:
        return []
    on_front = front(pts)
    lines = ["", f"## Accuracy against forward FLOPs at the largest data size ({study.sizes[-1]})", "",
             "On the Pareto front: no other variant is as accurate or more for as few FLOPs or fewer (means; "
             "the intervals say how sure that is).", "",
             "| variant | GFLOPs / sample | mean [95% CI] | on the front |", "|---|---|---|---|"]
    for v in sorted(pts, key=lambda v: pts[v][0]):
        lines.append(f"| {v} | {pts[v][0]:.4f} | {fmt(pts[v][1])} | {'yes' if v in on_front else ''} |")
    return lines

