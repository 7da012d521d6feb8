"""The report's figures, one function each: the metric by variant at the largest data size,
against data size (when the study has two sizes or more), per family with paired differences
(when the metric has categories), and against training compute and wall-clock."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class _Style:
    study: Any  # report.Study
    colours: dict[str, Any]
    chance: float | None
    per_chance: dict[str, float]

    @property
    def largest(self) -> Any:
        return self.study.sizes[-1]

    def frame(self, ax, chance: float | None) -> None:
        ax.set_ylim(0, 1.02)
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="ceiling")
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_ylabel(self.study.metric)


def plots(study, out: Path, per_chance: dict[str, float], chance: float | None) -> list[Path]:
    """Every figure the study has data for, written under `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = plt.cm.tab10 if len(study.variants) <= 10 else plt.cm.tab20  # a colour each
    style = _Style(study, {v: cmap(i % cmap.N) for i, v in enumerate(study.variants)}, chance, per_chance)
    figures = [_by_variant(style, out), _by_data_size(style, out), _by_family(style, out), _by_compute(style, out),
               _pareto(style, out)]
    return [f for f in figures if f is not None]


def _by_variant(style: _Style, out: Path) -> Path:
    import matplotlib.pyplot as plt

    study, largest = style.study, style.largest
    fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(study.variants)), 4))
    for x, v in enumerate(study.variants):
        i = study.interval(v, largest)
        if i is None:
            continue
        err = None if i.low is None else [[i.mean - i.low], [i.high - i.mean]]
        ax.bar(x, i.mean, yerr=err, capsize=4, color=style.colours[v])
        ax.scatter([x] * len(study.values(v, largest)), list(study.values(v, largest).values()), color="k", s=8, zorder=3)
    style.frame(ax, style.chance)
    ax.set_xticks(range(len(study.variants)), [v.replace(", ", "\n") for v in study.variants], fontsize=7)
    seeds = max((len(study.values(v, largest)) for v in study.variants), default=0)
    ax.set_title(f"data size {largest}: mean, 95% t-interval over {seeds} seeds (dots: seeds)" if seeds > 1
                 else f"data size {largest}: one seed, no interval", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return save(fig, out / "metric_vs_variant.png")


def _by_data_size(style: _Style, out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    study = style.study
    numeric = [s for s in study.sizes if s != "all"]
    if len(numeric) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for v in study.variants:
        stats = [(s, study.interval(v, s)) for s in numeric]
        stats = [(s, i) for s, i in stats if i is not None]
        ax.plot([s for s, _ in stats], [i.mean for _, i in stats], marker="o", color=style.colours[v], label=v)
        band = [(s, i) for s, i in stats if i.low is not None]
        if band:
            ax.fill_between([s for s, _ in band], [i.low for _, i in band], [i.high for _, i in band],
                            color=style.colours[v], alpha=0.15)
    style.frame(ax, style.chance)
    ax.set_xscale("log")
    ax.set_xlabel("training samples (data.subset)")
    ax.set_title("data efficiency: mean and 95% t-band over seeds", fontsize=9)
    ax.legend(fontsize=6)
    return save(fig, out / "metric_vs_data_size.png")


def _errors(intervals: list) -> list[list[float]]:
    """Matplotlib's [below, above] error bars of intervals (0 where there is none)."""
    return [[0 if not i or i.low is None else i.mean - i.low for i in intervals],
            [0 if not i or i.low is None else i.high - i.mean for i in intervals]]


def _by_family(style: _Style, out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    study, largest = style.study, style.largest
    if not study.categories:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / max(len(study.variants), 1)
    for k, v in enumerate(study.variants):
        xs = [c + k * width for c in range(len(study.categories))]
        ints = [study.interval(v, largest, c) for c in study.categories]
        a1.bar(xs, [i.mean if i else 0 for i in ints], width, yerr=_errors(ints), capsize=2, color=style.colours[v],
               label=v)
        if v != study.reference:
            diffs = [study.difference(v, largest, c) for c in study.categories]
            a2.errorbar(xs, [d.mean if d else 0 for d in diffs], yerr=_errors(diffs), fmt="o", capsize=3,
                        color=style.colours[v], label=v)
    for c, name in enumerate(study.categories):
        if name in style.per_chance:
            a1.hlines(style.per_chance[name], c - 0.1, c + 0.9, colors="grey", linestyles="--", linewidth=1)
    style.frame(a1, None)
    ticks = [c + 0.4 - width / 2 for c in range(len(study.categories))]
    a1.set_xticks(ticks, study.categories, fontsize=8)
    a1.set_title(f"per category at data size {largest} (dashed: chance)", fontsize=9)
    a1.legend(fontsize=6)
    a2.axhline(0, color="k", linewidth=1)
    a2.set_xticks(ticks, study.categories, fontsize=8)
    a2.set_ylabel(f"difference from {study.reference}")
    a2.set_title("paired difference by seed, 95% t-interval", fontsize=9)
    if a2.get_legend_handles_labels()[0]:  # none when the reference is the only variant
        a2.legend(fontsize=6)
    return save(fig, out / "families.png")


def _by_compute(style: _Style, out: Path) -> Path:
    import matplotlib.pyplot as plt

    study = style.study
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for v in study.variants:
        rs = [r for r in study.rows if r["variant"] == v and r["train_pflops"] is not None]
        a1.scatter([r["train_pflops"] for r in rs], [r["objective"] for r in rs], color=style.colours[v], label=v, s=14)
        a2.scatter([r["train_seconds"] for r in rs], [r["objective"] for r in rs], color=style.colours[v], s=14)
    style.frame(a1, style.chance)
    style.frame(a2, style.chance)
    a1.set_xlabel("training PFLOPs (3 x forward FLOPs x samples; FLOP counter)")
    a1.set_xlim(left=0)
    a2.set_xlabel("trial wall-clock in this sweep, s (contention-sensitive)")
    a2.set_xlim(left=0)
    a1.set_title("accuracy vs training compute", fontsize=9)
    a1.legend(fontsize=6)
    return save(fig, out / "metric_vs_compute.png")


def _pareto(style: _Style, out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    from eelight.sweeps.pareto import front, points

    pts = points(style.study)
    if len(pts) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v, (g, i) in pts.items():
        err = [[i.mean - i.low], [i.high - i.mean]] if i.low is not None else None
        ax.errorbar([g], [i.mean], yerr=err, fmt="o", color=style.colours[v], capsize=3, label=v)
        ax.annotate(v.removeprefix("model_preset="), (g, i.mean), textcoords="offset points", xytext=(4, 4), fontsize=6)
    line = front(pts)
    ax.plot([pts[v][0] for v in line], [pts[v][1].mean for v in line], color="black", linewidth=1, label="Pareto front")
    style.frame(ax, style.chance)
    ax.set_xlabel("forward GFLOPs per sample (FLOP counter)")
    ax.set_xlim(left=0)
    ax.set_title(f"accuracy vs inference compute, data size {style.largest}; 95% t-intervals over seeds", fontsize=9)
    ax.legend(fontsize=6)
    return save(fig, out / "pareto.png")


def save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
