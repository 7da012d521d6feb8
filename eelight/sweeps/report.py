"""Sweep report: tables (CSV + Markdown) and PNG plots (`sweeps/figures.py`) written to `sweeps_out/<name>/report/`
and logged to the study's parent MLflow run. Statistics in `eelight.sweeps.stats`: means with
95% Student-t intervals over seeds, paired differences against a reference variant (same seed
and data size), the smallest difference the study can detect at its seed count, and for each
control (`controls:` in the sweep file, a variant that must lose) whether it is separated from
the best other variant per category: their 95% intervals do not overlap, i.e. the difference
is larger than the two bands' half-widths together.

A variant is a trial's grid parameters without the seed and data size. Figures are drawn only
where the sweep supports them, with chance (dashed) and ceiling (dotted) marked and accuracy
axes from 0 to 1:
- `metric_vs_variant.png`: the objective per variant at the largest data size (95% interval);
- `metric_vs_data_size.png`: the data-efficiency curve, one line and band per variant (only
  with 2 or more data sizes);
- `families.png`: per category of the objective's benchmark (the probe's task families), the
  score (left) and the paired difference from the reference variant (right);
- `metric_vs_compute.png`: the objective against training FLOPs (deterministic, counted with
  the FLOP counter) and, beside it, the wall-clock the trial took in this sweep (contended
  machines make that panel noisy; the FLOPs panel is the comparison).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eelight.errors import UserError
from eelight.sweeps.config import SweepConfig
from eelight.sweeps.pareto import markdown_lines as pareto_lines
from eelight.sweeps.pareto import training_free_rows
from eelight.sweeps.stats import Interval, detectable, paired, pooled_sd, t_interval

FIGURES = {"metric_vs_variant.png", "metric_vs_data_size.png", "families.png", "metric_vs_compute.png",
           "pareto.png", "cost_vs_visual_tokens.png"}  # the last: written by earlier versions


def trial_rows(study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if "grid_point" not in t.user_attrs:
            continue
        point = t.user_attrs.get("point", {})
        variant = ", ".join(f"{k}={v}" for k, v in point.items() if k not in ("seed", "data_size", "repeat"))
        a = t.user_attrs
        rows.append({
            "trial": t.number, "state": t.state.name, "variant": variant or "base",
            "seed": point.get("seed"), "data_size": point.get("data_size") or "all",
            "objective": t.value, "samples_per_s": a.get("samples_per_s"),
            "gflops_per_sample": (a["flops_per_sample"] / 1e9) if "flops_per_sample" in a else None,
            "train_pflops": (a["train_flops"] / 1e15) if "train_flops" in a else None,
            "train_seconds": a.get("train_seconds"), "visual_tokens": a.get("visual_tokens"),
            "trainable_params": a.get("trainable_params"),
            **{f"param.{k}": v for k, v in t.params.items() if k not in ("seed", "data_size")},
            **{f"metric.{k}": v for k, v in a.get("metrics", {}).items()},  # every benchmark scored
        })
        rows += training_free_rows(t, rows[-1])
    return rows


def _size_key(size: Any) -> float:
    return float("inf") if size == "all" else float(size)


class Study:
    """The complete trials of a sweep, grouped for the statistics."""

    def __init__(self, rows: list[dict[str, Any]], metric: str, reference: str | None = None,
                 controls: list[str] | tuple[str, ...] = ()) -> None:
        self.rows = [r for r in rows if r["state"] == "COMPLETE"]
        self.metric = metric
        self.variants = sorted({r["variant"] for r in self.rows})
        self.sizes = sorted({r["data_size"] for r in self.rows}, key=_size_key)
        self.reference = reference if reference in self.variants else (self.variants[0] if self.variants else None)
        self.controls = [c for c in controls if c in self.variants]
        prefix = metric + "/"
        self.categories = sorted({k.removeprefix("metric." + prefix) for r in self.rows for k in r
                                  if k.startswith("metric." + prefix) and k.count("/") == metric.count("/") + 1})

    def values(self, variant: str, size: Any, category: str | None = None) -> dict[int, float]:
        key = "objective" if category is None else f"metric.{self.metric}/{category}"
        return {r["seed"]: float(r[key]) for r in self.rows
                if r["variant"] == variant and r["data_size"] == size and r.get(key) not in (None, "")}

    def interval(self, variant: str, size: Any, category: str | None = None) -> Interval | None:
        v = self.values(variant, size, category)
        return t_interval(list(v.values())) if v else None

    def difference(self, variant: str, size: Any, category: str | None = None,
                   reference: str | None = None) -> Interval | None:
        return paired(self.values(variant, size, category), self.values(reference or self.reference, size, category))

    def best(self, size: Any, category: str | None = None) -> str | None:
        """The variant, controls excluded, with the highest mean."""
        means = {v: i.mean for v in self.variants
                 if v not in self.controls and (i := self.interval(v, size, category)) is not None}
        return max(means, key=means.get) if means else None

    def separated(self, control: str, size: Any, category: str | None = None) -> bool | None:
        """Whether the control's and the best variant's 95% intervals do not overlap (None:
        fewer than 2 seeds, no interval)."""
        best = self.best(size, category)
        a, b = self.interval(control, size, category), best and self.interval(best, size, category)
        if a is None or b is None or a.low is None or b.low is None:
            return None
        return a.high < b.low or b.high < a.low


def _chance(metric: str) -> tuple[dict[str, float], float | None]:
    from eelight.data.families import chance_for

    return chance_for(metric.split("/")[0])


def _fmt(i: Interval | None, signed: bool = False) -> str:
    if i is None:
        return "–"
    sign = "+" if signed else ""
    if i.low is None:
        return f"{i.mean:{sign}.3f} (1 seed)"
    return f"{i.mean:{sign}.3f} [{i.low:{sign}.3f}, {i.high:{sign}.3f}]"


def markdown(study: Study, sweep: SweepConfig) -> str:
    per_chance, chance = _chance(study.metric)
    largest = study.sizes[-1]
    lines = [f"# Sweep {sweep.name}", "", f"Objective: `{study.metric}` ({sweep.objective.direction}); "
             f"{len(study.rows)} complete trials; intervals are 95% Student-t over seeds "
             f"(mean [low, high]); differences are paired by seed against `{study.reference}`."]
    if chance is not None:
        lines.append(f"Chance (a uniform random guesser): {chance:.3f} overall.")
    lines += ["", "## Objective per variant and data size", "",
              "| variant | data size | seeds | mean [95% CI] | vs reference, paired [95% CI] | GFLOPs/sample | "
              "training PFLOPs |", "|---|---|---|---|---|---|---|"]
    for v in study.variants:
        for size in study.sizes:
            i = study.interval(v, size)
            if i is None:
                continue
            rows = [r for r in study.rows if r["variant"] == v and r["data_size"] == size]
            gf, pf = rows[0]["gflops_per_sample"], rows[0]["train_pflops"]
            diff = "reference" if v == study.reference else _fmt(study.difference(v, size), signed=True)
            lines.append(f"| {v} | {size} | {i.n} | {_fmt(i)} | {diff} | "
                         f"{'–' if gf is None else f'{gf:.4f}'} | {'–' if pf is None else f'{pf:.3f}'} |")
    if study.categories:
        lines += ["", f"## Per category at the largest data size ({largest})", "",
                  "| category | chance | " + " | ".join(study.variants) + " |",
                  "|---|---|" + "---|" * len(study.variants)]
        for c in study.categories:
            cells = []
            for v in study.variants:
                i, d = study.interval(v, largest, c), study.difference(v, largest, c)
                cells.append(_fmt(i) + ("" if v == study.reference or d is None else f"; Δ {_fmt(d, True)}"))
            ch = per_chance.get(c)
            lines.append(f"| {c} | {'–' if ch is None else f'{ch:.3f}'} | " + " | ".join(cells) + " |")
    for control in study.controls:
        lines += _control_lines(study, control, {None: chance, **per_chance})
    lines += _trained_parameter_lines(study)
    lines += pareto_lines(study, _fmt)
    lines += ["", "## What the study can detect", ""]
    for size in study.sizes:
        diffs = [d for v in study.variants if v != study.reference and (d := study.difference(v, size))]
        sd = pooled_sd(diffs)
        n = min((d.n for d in diffs), default=0)
        mdd = detectable(sd, n) if sd is not None else None
        lines.append(f"- data size {size}: " + (
            f"pooled SD of paired differences {sd:.3f} over {n} seeds -> smallest difference detectable "
            f"(paired t-test, alpha 0.05, power 0.8): {mdd:.3f}" if mdd is not None
            else "fewer than 2 seeds per comparison: no interval, nothing can be claimed"))
    other = [r for r in study.rows if r["state"] != "COMPLETE"]
    if other:
        lines += ["", "Not complete: " + ", ".join(f"trial {r['trial']} {r['state']}" for r in other)]
    return "\n".join(lines) + "\n"


def _control_lines(study: Study, control: str, per_chance: dict[str | None, float | None]) -> list[str]:
    largest = study.sizes[-1]
    lines = ["", f"## Control `{control}` against the best other variant at data size {largest}", "",
             "Separated: the two 95% intervals do not overlap.", "",
             "| category | chance | best variant | best [95% CI] | control [95% CI] | control - best, paired "
             "[95% CI] | separated |", "|---|---|---|---|---|---|---|"]
    for c in [None, *study.categories]:
        best = study.best(largest, c)
        if best is None:
            continue
        sep = study.separated(control, largest, c)
        ch = per_chance.get(c)
        lines.append(f"| {c or '(objective)'} | {'–' if ch is None else f'{ch:.3f}'} | {best} | "
                     f"{_fmt(study.interval(best, largest, c))} | {_fmt(study.interval(control, largest, c))} | "
                     f"{_fmt(study.difference(control, largest, c, reference=best), signed=True)} | "
                     f"{'–' if sep is None else ('yes' if sep else 'no')} |")
    return lines


def _plots(study: Study, out: Path) -> list[Path]:
    from eelight.sweeps.figures import plots

    per_chance, chance = _chance(study.metric)
    return plots(study, out, per_chance, chance)


def write_trials_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Every trial, every column (params and benchmark metrics last): the file `--pool` reads back."""
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k.startswith(("param.", "metric.")), k))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def write_report(sweep: SweepConfig, study=None) -> Path:
    """Write the tables and plots for the sweep's study; log them to its parent run."""
    import optuna

    from eelight.sweeps.storage import make_storage

    study = study or optuna.load_study(study_name=sweep.name, storage=make_storage(sweep))
    rows = trial_rows(study)
    if not any(r["state"] == "COMPLETE" for r in rows):
        failed = [t.user_attrs["error"] for t in study.trials if t.user_attrs.get("error")]
        why = f" ({len(failed)} failed; the last with: {failed[-1].splitlines()[0][:300]})" if failed else ""
        raise UserError(f"study {sweep.name!r} has no complete trial yet: nothing to report{why}")
    return write_files(sweep, rows, "report", lambda analysed: markdown(analysed, sweep),
                       study.user_attrs.get("mlflow_parent_run_id"))


def write_files(sweep: SweepConfig, rows: list[dict[str, Any]], folder: str, render: Callable[[Study], str],
                parent: str | None) -> Path:
    """trials.csv, summary.md (`render`) and the figures of `rows` in sweeps_out/<name>/<folder>/,
    also under the parent run's artifacts `<folder>/`."""
    from eelight.sweeps.storage import sweep_tracking

    out = Path(sweep.out_dir, sweep.name, folder)
    out.mkdir(parents=True, exist_ok=True)
    write_trials_csv(rows, out / "trials.csv")
    analysed = Study(rows, sweep.objective.metric, sweep.reference, sweep.controls)
    (out / "summary.md").write_text(render(analysed))
    figures = _plots(analysed, out)
    for name in FIGURES - {p.name for p in figures}:  # a figure this sweep does not support must not linger
        (out / name).unlink(missing_ok=True)  # (two workers may write the report at once: never delete theirs)
    if parent:
        sweep_tracking(sweep).log_files(parent, [out / "trials.csv", out / "summary.md", *figures],
                                           artifact_path=folder)
    return out


def _trained_parameter_lines(study: Study) -> list[str]:
    """Parameters trained in each variant's last stage (its recipe's): a data-efficiency axis too."""
    counts = {r["variant"]: r.get("trainable_params") for r in study.rows if r.get("trainable_params")}
    if len(set(counts.values())) < 2:  # every variant trains the same parameters: nothing to compare
        return []
    lines = ["", "## Parameters trained in the last stage", "", "| variant | parameters trained |", "|---|---|"]
    return lines + [f"| {v} | {counts[v]:,} |" for v in study.variants if v in counts]
