"""Replicate runs of one sweep pooled (`eelight report NAME --pool trials.csv`): pairs stay inside
a run, intervals against values computed by hand (t(0.975, 3) = 3.182446, t(0.975, 1) = 12.706205)."""

import math

import pytest

from eelight.errors import UserError
from eelight.sweeps.config import SweepConfig
from eelight.sweeps.pooled import pool, pooled_markdown, read_trials
from eelight.sweeps.report import Study, write_trials_csv

T975_3, T975_1 = 3.182446, 12.706205


def _run(values: dict[str, list[float]]) -> list[dict]:
    rows = []
    for variant, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            rows.append({"trial": len(rows), "state": "COMPLETE", "variant": f"model_preset={variant}", "seed": seed,
                         "data_size": 300, "objective": value, "gflops_per_sample": 0.2, "train_pflops": 0.006,
                         "train_seconds": 50.0, "param.model_preset": variant, "metric.probe/accuracy": value,
                         "metric.probe/accuracy/count": value / 2})
    rows.append({"trial": 9, "state": "FAIL", "variant": "model_preset=B", "seed": 2, "data_size": 300,
                 "objective": None, "param.model_preset": "B"})
    return rows


def test_a_report_csv_reads_back_as_trial_rows(tmp_path):
    rows = _run({"A": [0.4, 0.5], "B": [0.45, 0.55]})
    write_trials_csv(rows, tmp_path / "trials.csv")
    back = read_trials(tmp_path / "trials.csv", "probe/accuracy")
    for mine, read in zip(rows, back, strict=True):
        assert {k: v for k, v in read.items() if v is not None} == mine or mine["state"] == "FAIL"
    assert back[-1]["objective"] is None and back[-1]["state"] == "FAIL"


def test_pooled_pairs_stay_inside_a_run_and_match_hand_computed_intervals(tmp_path):
    write_trials_csv(_run({"A": [0.4, 0.5], "B": [0.45, 0.55]}), tmp_path / "old.csv")
    rows = pool([_run({"A": [0.5, 0.6], "B": [0.6, 0.8]}), read_trials(tmp_path / "old.csv", "probe/accuracy")])
    study = Study(rows, "probe/accuracy", reference="model_preset=A")
    assert study.values("model_preset=A", 300) == {"0:0": 0.5, "0:1": 0.6, "1:0": 0.4, "1:1": 0.5}
    d = study.difference("model_preset=B", 300)  # run 0: +0.1, +0.2; run 1: +0.05, +0.05
    sd = math.sqrt((0.0 ** 2 + 0.1 ** 2 + 0.05 ** 2 + 0.05 ** 2) / 3)
    assert d.n == 4 and d.mean == pytest.approx(0.1)
    assert d.low == pytest.approx(0.1 - T975_3 * sd / 2, abs=1e-6) and d.high == pytest.approx(0.1 + T975_3 * sd / 2,
                                                                                                abs=1e-6)
    sweep = SweepConfig(name="fake", reference="model_preset=A")
    text = pooled_markdown(study, sweep, ["old.csv"])
    assert "Pooled over 2 runs of this sweep: run 0 is this study, run 1 `old.csv`" in text
    assert "| model_preset=B | 300 | 4 | 0.600 [" in text  # four (run, seed) units
    half0 = T975_1 * math.sqrt(0.005) / math.sqrt(2)  # run 0's differences 0.1, 0.2: sd sqrt(0.005)
    assert (f"| model_preset=B | 300 | +0.150 [{0.15 - half0:+.3f}, {0.15 + half0:+.3f}] | "
            "+0.050 [+0.050, +0.050] |") in text


def test_a_file_of_another_objective_or_no_file_is_one_error(tmp_path):
    rows = _run({"A": [0.4, 0.5]})
    for r in rows:
        r["objective"] = r.get("metric.probe/accuracy/count")  # a sweep whose objective was the count family
    write_trials_csv(rows, tmp_path / "other.csv")
    with pytest.raises(UserError, match="objective is not probe/accuracy"):
        read_trials(tmp_path / "other.csv", "probe/accuracy")
    with pytest.raises(UserError, match="no such file"):
        read_trials(tmp_path / "missing.csv", "probe/accuracy")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a sweep report's trials.csv"):
        read_trials(tmp_path / "bad.csv", "probe/accuracy")


def test_the_successors_report_pools_with_its_training_free_rows(tmp_path):
    rows = read_trials("docs/results/successors/trials.csv", "probe/accuracy")  # the kept run of 2026-12-05
    free = [r for r in rows if r["training_free_on"] is not None]
    assert {r["training_free_on"] for r in free} == {"model_preset=llava"}
    assert {r["variant"] for r in free} == {"model_preset=fastv", "model_preset=fastv_r75", "model_preset=shortv",
                                            "model_preset=ee_mllm_f"}
    assert len(free) == 4 * 2 * 3  # four variants on each LLaVA trial: 2 sizes x 3 seeds
    study = Study(pool([rows, rows]), "probe/accuracy", reference="model_preset=llava")
    assert study.difference("model_preset=fastv", 3000).n == 6  # paired by (run, seed) with LLaVA's trials
    text = (tmp_path / "edited.csv")
    text.write_text("variant,seed,data_size,objective,state\nmodel_preset=A,zero,300,0.5,COMPLETE\n")
    with pytest.raises(UserError, match="edited.csv.*a column of numbers holds text"):
        read_trials(text, "probe/accuracy")
