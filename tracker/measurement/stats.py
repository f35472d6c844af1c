"""The spread of repeated measurements: mean, standard deviation, Student-t 95% intervals, ratios.

Used for the windows of one run (``<metric>_std``, ``_ci95_low``, ``_ci95_high``) and for the
search's comparisons (``carbon_reduction_x`` with its interval, ties between settings).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float  # sample standard deviation; NaN with one value
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        """Of every value given: a NaN among them (a reading that could not be taken) stays NaN."""
        values = list(values)
        if not values:
            return cls(math.nan, math.nan, 0)
        if any(math.isnan(v) for v in values):
            return cls(math.nan, math.nan, len(values))
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan,
                   len(values))

    @property
    def ci95(self) -> tuple[float, float]:
        """Student-t 95% interval of the mean; NaN bounds with fewer than two values."""
        if self.n < 2:
            return math.nan, math.nan
        half = t95(self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    def overlaps(self, other: Spread) -> bool:
        """Whether the two 95% intervals overlap (False when either has none)."""
        (a_low, a_high), (b_low, b_high) = self.ci95, other.ci95
        if any(math.isnan(v) for v in (a_low, a_high, b_low, b_high)):
            return False
        return a_low <= b_high and b_low <= a_high


def pooled(groups: Sequence[Spread]) -> Spread:
    """One spread over every value of several groups, from each group's mean, std and count
    (the between-group spread, such as drift between measurements, is included)."""
    groups = [g for g in groups if g.n > 0 and not math.isnan(g.mean)]
    n = sum(g.n for g in groups)
    if n == 0:
        return Spread(math.nan, math.nan, 0)
    mean = sum(g.mean * g.n for g in groups) / n
    if n < 2:
        return Spread(mean, math.nan, n)
    within = sum((g.n - 1) * (g.std if g.n > 1 else 0.0) ** 2 for g in groups)
    between = sum(g.n * (g.mean - mean) ** 2 for g in groups)
    return Spread(mean, math.sqrt((within + between) / (n - 1)), n)


def ratio_interval(numerator: Spread, denominator: Spread) -> tuple[float, float, float]:
    """numerator.mean / denominator.mean with a 95% interval, on the log scale (delta method,
    Welch-Satterthwaite degrees of freedom). NaN bounds when either side has fewer than two values."""
    if denominator.mean <= 0 or numerator.mean <= 0:
        return math.nan, math.nan, math.nan
    ratio = numerator.mean / denominator.mean
    if numerator.n < 2 or denominator.n < 2:
        return ratio, math.nan, math.nan
    a = (numerator.std / numerator.mean) ** 2 / numerator.n
    b = (denominator.std / denominator.mean) ** 2 / denominator.n
    if a + b == 0:
        return ratio, ratio, ratio
    df = (a + b) ** 2 / (a ** 2 / (numerator.n - 1) + b ** 2 / (denominator.n - 1))
    half = t95(df) * math.sqrt(a + b)
    return ratio, ratio * math.exp(-half), ratio * math.exp(half)


def t95(df: float) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 to 100), linear between order statistics; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
