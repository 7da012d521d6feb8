"""The statistics of a study (docs/DESIGN.md §6): a variant is better only by more than the seed noise.

- `t_interval`: mean and 95% Student-t interval over seeds (n >= 2; none for one seed).
- `paired`: differences variant - reference over the seeds both ran at the same data size
  (same seed = same data subset and initialisation order), with their t-interval.
- `detectable`: the smallest true difference a paired t-test at alpha = 0.05 finds with 80%
  power at n seeds, given the spread of the paired differences:
  (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float | None  # None: fewer than 2 values, no interval
    high: float | None
    n: int
    sd: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.high is None else (self.high - self.low) / 2

    def __str__(self) -> str:
        if self.low is None:
            return f"{self.mean:.3f} (n={self.n}, no interval)"
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


def t_quantile(p: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, df))


def t_interval(values: list[float], confidence: float = 0.95) -> Interval:
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, None, None, n, None)
    sd = statistics.stdev(values)
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


def paired(variant: dict[int, float], reference: dict[int, float], confidence: float = 0.95) -> Interval | None:
    """variant/reference: seed -> value. The interval of the differences over shared seeds."""
    seeds = sorted(variant.keys() & reference.keys())
    if not seeds:
        return None
    return t_interval([variant[s] - reference[s] for s in seeds], confidence)


def detectable(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Minimum detectable paired difference at n seeds (None below 2 seeds)."""
    if n < 2:
        return None
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def pooled_sd(intervals: list[Interval]) -> float | None:
    """The pooled standard deviation of several paired-difference samples (same n or not)."""
    usable = [i for i in intervals if i.sd is not None]
    dof = sum(i.n - 1 for i in usable)
    if not dof:
        return None
    return math.sqrt(sum((i.n - 1) * i.sd ** 2 for i in usable) / dof)
