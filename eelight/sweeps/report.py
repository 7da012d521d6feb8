"""Sweep report: a table (CSV + Markdown) and PNG plots written to
`sweeps_out/<name>/report/` and logged to the study's parent MLflow run.

- `metric_vs_variant.png`: the objective per variant (mean ± std over seeds);
- `metric_vs_data_size.png`: the objective against data size, one line per variant
  (the data-efficiency curve);
- `cost_vs_visual_tokens.png`: training cost (samples/s, forward GFLOPs per sample)
  against visual tokens, per variant.
A variant is a trial's grid parameters without the seed and data size.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from eelight.sweeps.config import SweepConfig


def trial_rows(study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if "grid_point" not in t.user_attrs:
            continue
        point = t.user_attrs.get("point", {})
        variant = ", ".join(f"{k}={v}" for k, v in point.items() if k not in ("seed", "data_size", "repeat"))
        rows.append({
            "trial": t.number, "state": t.state.name, "variant": variant or "base",
            "seed": point.get("seed"), "data_size": point.get("data_size") or "all",
            "objective": t.value, "samples_per_s": t.user_attrs.get("samples_per_s"),
            "gflops_per_sample": (t.user_attrs["flops_per_sample"] / 1e9) if "flops_per_sample" in t.user_attrs else None,
            "visual_tokens": t.user_attrs.get("visual_tokens"),
            **{f"param.{k}": v for k, v in t.params.items() if k not in ("seed", "data_size")},
            **{f"metric.{k}": v for k, v in t.user_attrs.get("metrics", {}).items()},  # every benchmark scored
        })
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _plots(rows: list[dict[str, Any]], metric: str, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["state"] == "COMPLETE"]
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for r in done:
        by_variant[r["variant"]].append(r)
    variants = sorted(by_variant)
    paths = []

    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(variants)), 4))
    stats = [_mean_std([r["objective"] for r in by_variant[v]]) for v in variants]
    ax.bar(range(len(variants)), [m for m, _ in stats], yerr=[s for _, s in stats], capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(variants)), [v.replace(", ", "\n") for v in variants], fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title("objective per variant (mean ± std over seeds)")
    paths.append(_save(fig, out / "metric_vs_variant.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for v in variants:
        sizes: dict[Any, list[float]] = defaultdict(list)
        for r in by_variant[v]:
            sizes[r["data_size"]].append(r["objective"])
        xs = sorted(sizes, key=lambda s: float("inf") if s == "all" else s)
        numeric = [s for s in xs if s != "all"]
        if numeric:
            means = [_mean_std(sizes[s]) for s in numeric]
            ax.errorbar(numeric, [m for m, _ in means], yerr=[s for _, s in means], marker="o", capsize=3, label=v)
    ax.set_xlabel("training samples (data.subset)")
    ax.set_ylabel(metric)
    ax.set_title("data efficiency")
    if ax.lines:
        ax.set_xscale("log")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "one data size only", ha="center", va="center", transform=ax.transAxes)
    paths.append(_save(fig, out / "metric_vs_data_size.png"))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for v in variants:
        rs = [r for r in by_variant[v] if r["visual_tokens"] is not None]
        if rs:
            a1.scatter([r["visual_tokens"] for r in rs], [r["samples_per_s"] or 0 for r in rs], label=v)
            a2.scatter([r["visual_tokens"] for r in rs], [r["gflops_per_sample"] for r in rs], label=v)
    a1.set(xlabel="visual tokens", ylabel="training samples/s", title="throughput")
    a2.set(xlabel="visual tokens", ylabel="forward GFLOPs / sample", title="compute")
    a2.legend(fontsize=7)
    paths.append(_save(fig, out / "cost_vs_visual_tokens.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _markdown(rows: list[dict[str, Any]], metric: str) -> str:
    done = [r for r in rows if r["state"] == "COMPLETE"]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in done:
        groups[(r["variant"], r["data_size"])].append(r)
    lines = [f"| variant | data size | trials | {metric} (mean ± std) | samples/s | GFLOPs/sample |",
             "|---|---|---|---|---|---|"]
    for (variant, size), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        m, s = _mean_std([r["objective"] for r in rs])
        sps = [r["samples_per_s"] for r in rs if r["samples_per_s"]]
        gf = rs[0]["gflops_per_sample"]
        lines.append(f"| {variant} | {size} | {len(rs)} | {m:.3f} ± {s:.3f} | "
                     f"{statistics.fmean(sps):.0f} | {gf:.4f} |" if sps else
                     f"| {variant} | {size} | {len(rs)} | {m:.3f} ± {s:.3f} | – | {gf:.4f} |")
    other = [r for r in rows if r["state"] != "COMPLETE"]
    if other:
        lines += ["", "Not complete: " + ", ".join(f"trial {r['trial']} {r['state']}" for r in other)]
    return "\n".join(lines) + "\n"


def write_report(sweep: SweepConfig, study=None) -> Path:
    """Write the table and plots for the sweep's study; log them to its parent run."""
    import optuna

    from eelight.sweeps.runner import storage_url
    from eelight.sweeps.tracking import sweep_client

    study = study or optuna.load_study(study_name=sweep.name, storage=storage_url(sweep))
    rows = trial_rows(study)
    if not any(r["state"] == "COMPLETE" for r in rows):
        raise ValueError(f"study {sweep.name!r} has no complete trial yet: nothing to report")
    out = Path(sweep.out_dir, sweep.name, "report")
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k.startswith(("param.", "metric.")), k))
    with open(out / "trials.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.md").write_text(f"# Sweep {sweep.name}\n\nObjective: {sweep.objective.metric} "
                                    f"({sweep.objective.direction})\n\n" + _markdown(rows, sweep.objective.metric))
    paths = [out / "trials.csv", out / "summary.md", *_plots(rows, sweep.objective.metric, out)]
    client, _ = sweep_client(sweep)
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if parent:
        for p in paths:
            client.log_artifact(parent, str(p), artifact_path="report")
    return out
