"""The study's statistics against intervals computed by hand (t quantiles from tables:
t(0.975, 2) = 4.302653, t(0.8, 2) = 1.060660), on a small fake trial table."""

import math

import pytest

from eelight.sweeps.config import SweepConfig
from eelight.sweeps.report import Study, _plots, markdown
from eelight.sweeps.stats import detectable, paired, pooled_sd, t_interval

T975_2, T80_2 = 4.302653, 1.060660


def test_t_interval_by_hand():
    i = t_interval([0.5, 0.6, 0.7])
    half = T975_2 * 0.1 / math.sqrt(3)  # sd 0.1
    assert (i.mean, i.n) == (pytest.approx(0.6), 3)
    assert i.low == pytest.approx(0.6 - half, abs=1e-6) and i.high == pytest.approx(0.6 + half, abs=1e-6)
    one = t_interval([0.8])
    assert one.low is None and one.high is None and one.mean == 0.8


def test_paired_differences_use_shared_seeds_only():
    d = paired({0: 0.7, 1: 0.8, 2: 0.9}, {0: 0.6, 1: 0.6, 2: 0.8, 3: 0.5})  # seed 3 has no partner
    sd = math.sqrt(((0.1 - 0.4 / 3) ** 2 * 2 + (0.2 - 0.4 / 3) ** 2) / 2)
    half = T975_2 * sd / math.sqrt(3)
    assert d.n == 3 and d.mean == pytest.approx(0.4 / 3)
    assert d.low == pytest.approx(0.4 / 3 - half, abs=1e-6) and d.high == pytest.approx(0.4 / 3 + half, abs=1e-6)
    assert paired({0: 1.0}, {1: 1.0}) is None


def test_detectable_difference_and_pooled_sd():
    assert detectable(0.05, 3) == pytest.approx((T975_2 + T80_2) * 0.05 / math.sqrt(3), abs=1e-6)
    assert detectable(0.05, 1) is None
    a, b = t_interval([0.0, 0.1, 0.2]), t_interval([0.0, 0.2, 0.4, 0.6, 0.8])  # sd 0.1 (n 3), sqrt(0.1) (n 5)
    assert pooled_sd([a, b]) == pytest.approx(math.sqrt((2 * 0.01 + 4 * b.sd ** 2) / 6))


def _rows():
    """Two variants x two data sizes x three seeds; per-family metrics of the probe."""
    rows = []
    acc = {("A", 100): [0.50, 0.60, 0.70], ("A", 400): [0.70, 0.80, 0.90],
           ("B", 100): [0.40, 0.40, 0.60], ("B", 400): [0.60, 0.60, 0.80]}
    for (v, size), values in acc.items():
        for seed, value in enumerate(values):
            rows.append({"trial": len(rows), "state": "COMPLETE", "variant": f"model_preset={v}", "seed": seed,
                         "data_size": size, "objective": value, "gflops_per_sample": 0.01, "train_pflops": 0.002,
                         "train_seconds": 40.0, "metric.probe/accuracy": value,
                         "metric.probe/accuracy/count": value / 2, "metric.probe/accuracy/reading": 0.0})
    rows.append({"trial": 99, "state": "FAIL", "variant": "model_preset=B", "seed": 3, "data_size": 400,
                 "objective": None})
    return rows


def test_report_tables_from_a_fake_trial_table(tmp_path):
    study = Study(_rows(), "probe/accuracy", reference="model_preset=A")
    assert study.sizes == [100, 400] and study.categories == ["count", "reading"]
    text = markdown(study, SweepConfig(name="fake"))
    a400 = t_interval([0.7, 0.8, 0.9])
    assert f"| model_preset=A | 400 | 3 | 0.800 [{a400.low:.3f}, {a400.high:.3f}] | reference |" in text
    d = paired({0: 0.6, 1: 0.6, 2: 0.8}, {0: 0.7, 1: 0.8, 2: 0.9})  # B - A at 400: -0.1, -0.2, -0.1
    assert f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]" in text
    assert "| count | 0.111 |" in text  # the count family's chance, 1/9
    sd = pooled_sd([d])
    assert f"smallest difference detectable (paired t-test, alpha 0.05, power 0.8): {detectable(sd, 3):.3f}" in text
    paths = {p.name for p in _plots(study, tmp_path)}
    assert paths == {"metric_vs_variant.png", "metric_vs_data_size.png", "families.png", "metric_vs_compute.png",
                     "pareto.png"}


def test_pareto_front_keeps_the_variants_no_other_beats_on_both():
    """A: 0.02 GFLOPs, mean 0.8; B: 0.01, 0.667 (cheaper, worse: on the front); C: 0.03, 0.7
    (dearer and worse than A: off it)."""
    from eelight.sweeps.pareto import front, points

    rows = [r for r in _rows() if r["state"] == "COMPLETE" and r["data_size"] == 400]
    for r in rows:
        r["gflops_per_sample"] = {"model_preset=A": 0.02, "model_preset=B": 0.01}[r["variant"]]
    rows += [{**r, "variant": "model_preset=C", "gflops_per_sample": 0.03, "objective": 0.7} for r in rows[:3]]
    study = Study(rows, "probe/accuracy", reference="model_preset=A")
    pts = points(study)
    assert pts["model_preset=B"][1].mean == pytest.approx((0.6 + 0.6 + 0.8) / 3)
    assert front(pts) == ["model_preset=B", "model_preset=A"]
    text = markdown(study, SweepConfig(name="fake"))
    assert "| model_preset=C | 0.0300 | 0.700 [0.700, 0.700] |  |" in text
    assert "| model_preset=B | 0.0100 |" in text and text.count("| yes |") == 2


def test_one_data_size_one_seed_draws_no_curve_and_claims_no_interval(tmp_path):
    rows = [r for r in _rows() if r["data_size"] == 400 and r["seed"] == 0]
    study = Study(rows, "probe/accuracy")
    text = markdown(study, SweepConfig(name="fake"))
    assert "(1 seed)" in text and "nothing can be claimed" in text
    assert "metric_vs_data_size.png" not in {p.name for p in _plots(study, tmp_path)}


def test_control_separation_by_non_overlapping_intervals():
    rows = _rows()
    for seed, (value, count) in enumerate([(0.20, 0.05), (0.25, 0.45), (0.30, 0.05)]):  # C: a control
        rows.append({"trial": 50 + seed, "state": "COMPLETE", "variant": "model_preset=C", "seed": seed,
                     "data_size": 400, "objective": value, "gflops_per_sample": 0.01, "train_pflops": 0.002,
                     "train_seconds": 40.0, "metric.probe/accuracy/count": count,
                     "metric.probe/accuracy/reading": 0.0})
    study = Study(rows, "probe/accuracy", reference="model_preset=A", controls=["model_preset=C"])
    assert study.best(400) == "model_preset=A"  # A 0.8 > B 0.667; the control is never "best"
    # objective: A [0.552, 1.048] vs C 0.25 +- 4.303*0.05/sqrt(3) = [0.126, 0.374]: apart
    assert study.separated("model_preset=C", 400) is True
    # count: A 0.4 [0.276, 0.524] vs C mean 0.183, sd 0.231 -> [-0.39, 0.757]: overlap
    assert study.separated("model_preset=C", 400, "count") is False
    assert study.separated("model_preset=C", 100) is None  # the control did not run there
    text = markdown(study, SweepConfig(name="fake", controls=["model_preset=C"]))
    d = paired({0: 0.20, 1: 0.25, 2: 0.30}, {0: 0.7, 1: 0.8, 2: 0.9})
    assert (f"| (objective) | 0.256 | model_preset=A | 0.800 [0.552, 1.048] | 0.250 [0.126, 0.374] | "
            f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] | yes |") in text
    assert "| count | 0.111 | model_preset=A |" in text and text.count("| no |") == 2  # count, reading (0 = 0)
