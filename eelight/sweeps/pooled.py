"""Replicate runs of one sweep, analysed together: `eelight report NAME --pool OLD/trials.csv ...`.

A replicate is an earlier, complete run of the same sweep file whose report's `trials.csv` was
kept (e.g. `docs/results/archive/run6/trials.csv`); each run may have pretrained its own backbones. The
pooled report treats a (run, seed) pair as the unit: paired differences pair trials of the same
run and seed (same backbones, data subset and initialisation), and the t-intervals are over all
such pairs. That interval spans the run-to-run variance only if runs are exchangeable; with two
or three runs that cannot be tested, so the report also gives each run's own paired difference
(section "Per run"), and a claim should hold in each run, not only pooled.

Output: `sweeps_out/<name>/report_pooled/` (`trials.csv` with a `run` column: 0 is this study,
k the k-th file; `summary.md`; the figures), also under the parent MLflow run's artifacts.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from eelight.errors import UserError
from eelight.sweeps.config import SweepConfig
from eelight.sweeps.report import Study, _fmt, markdown, trial_rows, write_files
from eelight.sweeps.stats import paired

_TEXT = {"state", "variant", "training_free_on"}  # every other column of trials.csv is a number (or empty)


def _value(key: str, text: str) -> Any:
    if text == "" or key in _TEXT or key.startswith("param."):
        return None if text == "" else text
    if key == "data_size" and text == "all":
        return text
    number = float(text)
    return int(number) if key in ("trial", "seed", "data_size") else number


def read_trials(path: str | Path, metric: str) -> list[dict[str, Any]]:
    """The rows of a report's trials.csv, typed as `trial_rows` gives them; a file that is not
    one, or whose objective is not `metric`, is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--pool {path}: no such file; give the trials.csv of an earlier report of this sweep")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    column = f"metric.{metric}"
    if not rows or not {"variant", "seed", "data_size", "objective", "state"} <= rows[0].keys():
        raise UserError(f"--pool {path}: not a sweep report's trials.csv (it needs the columns variant, seed, "
                        "data_size, objective, state)")
    try:
        typed = [{k: _value(k, v) for k, v in r.items()} for r in rows]
    except ValueError as exn:
        raise UserError(f"--pool {path}: {exn} (a column of numbers holds text); pool only an unedited "
                        "trials.csv of a report") from None
    for r in typed:
        # The objective column is each run's own objective: another sweep's would mix silently.
        if r["state"] == "COMPLETE" and not (r.get(column) is not None and math.isclose(r[column], r["objective"])):
            raise UserError(f"--pool {path}: trial {r.get('trial')}'s objective is not {metric} (column {column}); "
                            "pool only reports of this sweep")
    return typed


def pool(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of several runs, `run` set to the run's index and `seed` to "run:seed", so that
    pairing by seed pairs trials of the same run."""
    return [{**r, "run": k, "seed": f"{k}:{r['seed']}"} for k, rows in enumerate(runs) for r in rows]


def per_run_lines(study: Study, runs: int) -> list[str]:
    """Each run's own paired difference from the reference, per variant and data size."""
    lines = ["", "## Per run: paired difference from the reference [95% CI over that run's seeds]", "",
             "| variant | data size | " + " | ".join(f"run {k}" for k in range(runs)) + " |",
             "|---|---|" + "---|" * runs]
    for v in study.variants:
        if v == study.reference:
            continue
        for size in study.sizes:
            a, b = study.values(v, size), study.values(study.reference, size)
            cells = []
            for k in range(runs):
                d = paired({s: x for s, x in a.items() if s.startswith(f"{k}:")},
                           {s: x for s, x in b.items() if s.startswith(f"{k}:")})
                cells.append(_fmt(d, signed=True))
            lines.append(f"| {v} | {size} | " + " | ".join(cells) + " |")
    return lines


def pooled_markdown(study: Study, sweep: SweepConfig, files: list[str]) -> str:
    head, _, rest = markdown(study, sweep).partition("\n\n")
    note = (f"Pooled over {len(files) + 1} runs of this sweep: run 0 is this study, "
            + ", ".join(f"run {k} `{f}`" for k, f in enumerate(files, start=1))
            + ". A unit is a (run, seed) pair: the `seeds` column counts them, and paired differences pair "
            "trials of the same run and seed. The pooled intervals assume the runs are exchangeable (so "
            "they are when they share their probe and backbones; runs that pretrained their own backbones "
            "differ by those too); the last section gives each run on its own.")
    return f"{head}\n\n{note}\n\n{rest}" + "\n".join(per_run_lines(study, len(files) + 1)) + "\n"


def write_pooled_report(sweep: SweepConfig, files: list[str], study=None) -> Path:
    """This study's trials and the `files`' (trials.csv of earlier runs), analysed together."""
    import optuna

    from eelight.sweeps.storage import make_storage

    others = [read_trials(f, sweep.objective.metric) for f in files]  # a bad file fails before the study is opened
    study = study or optuna.load_study(study_name=sweep.name, storage=make_storage(sweep))
    rows = pool([trial_rows(study), *others])
    if not any(r["state"] == "COMPLETE" for r in rows):
        raise UserError(f"study {sweep.name!r} and the pooled files have no complete trial: nothing to report")
    return write_files(sweep, rows, "report_pooled",
                       lambda analysed: pooled_markdown(analysed, sweep, [str(f) for f in files]),
                       study.user_attrs.get("mlflow_parent_run_id"))
