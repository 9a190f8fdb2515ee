"""Answers with their uncertainty: intervals, tests, corrections, rankings, curves and the words for REPORT.md.

Pure functions of numbers (numpy, scipy, statsmodels, pandas): no study, run folder or torch in here. The
scaling laws live in laws.py.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.regression.mixed_linear_model import MixedLM
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower
from statsmodels.stats.proportion import proportion_confint

ArrayLike = Sequence[float] | np.ndarray | pd.Series
POWER = 0.8  # the power at which a minimum detectable difference is stated


def _decimals(half: float) -> str:
    """A format that shows two significant digits of a half-width, as in 0.0931 ± 0.0012."""
    return f".{max(0, 1 - math.floor(math.log10(half)))}f" if half > 0 and math.isfinite(half) else ".4g"


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval: `mean` the point estimate, `n` the units behind it, `unit`
    what they are ("seeds", "configurations x 5 seeds"; "" unnamed)."""

    mean: float
    low: float
    high: float
    n: int
    stderr: float
    level: float = 0.95
    unit: str = ""

    @classmethod
    def from_columns(cls, row: Mapping[str, Any], prefix: str, n: int, unit: str = "",
                     scale: float = 1.0) -> Interval:
        """The Interval that `columns` wrote into a table row (prefix, prefix_low, prefix_high), times scale."""
        return cls(*(scale * float(row[f"{prefix}{end}"]) for end in ("", "_low", "_high")), int(n), math.nan,
                   unit=unit)

    def columns(self, prefix: str) -> dict[str, float]:
        """The interval as table columns: prefix, prefix_low, prefix_high."""
        return {prefix: self.mean, f"{prefix}_low": self.low, f"{prefix}_high": self.high}

    def excludes(self, x: float) -> bool:
        """True when x lies outside the interval; never for n=1, whose interval says nothing."""
        return self.n > 1 and not self.low <= x <= self.high

    def __str__(self) -> str:
        n = f"n={self.n} {self.unit}".rstrip()
        if self.n == 1:
            return f"{self.mean:.4g} ({n}, no interval)"
        half = (self.high - self.low) / 2
        fmt = _decimals(half)
        return f"{self.mean:{fmt}} ± {half:{fmt}} ({self.level * 100:g}% CI {self.low:{fmt}}–{self.high:{fmt}}, {n})"


def mean_interval(values: ArrayLike, level: float = 0.95, unit: str = "") -> Interval:
    """Student-t interval of the mean; n=1 gives low=high=mean and stderr nan (one value has no spread)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = float(v.mean())
    if v.size == 1:
        return Interval(mean, mean, mean, 1, math.nan, level, unit)
    se = float(v.std(ddof=1) / math.sqrt(v.size))
    half = float(sps.t.ppf((1 + level) / 2, v.size - 1)) * se
    return Interval(mean, mean - half, mean + half, int(v.size), se, level, unit)


def interval_columns(prefix: str, values: ArrayLike, level: float = 0.95) -> dict[str, float]:
    """mean_interval as table columns: prefix, prefix_low, prefix_high."""
    return mean_interval(values, level).columns(prefix)


def _matched(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """a and b as matched pairs; two Series are matched on their index (e.g. seed)."""
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        if set(a.index) != set(b.index):
            raise ValueError(f"a and b are not matched: indexes {sorted(a.index)} vs {sorted(b.index)}")
        b = b.reindex(a.index)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"a and b are not matched pairs: {a.size} vs {b.size} values")
    return a, b


def paired_difference(a: ArrayLike, b: ArrayLike, level: float = 0.95) -> Interval:
    """t-interval of a−b over matched pairs; two Series are matched on their index (e.g. seed)."""
    a, b = _matched(a, b)
    return mean_interval(a - b, level)


# Comparisons: an estimate of a − b with its test, its power and, once corrected, its family


@dataclass(frozen=True)
class Comparison:
    """a − b with its interval, its test's p, and what the test could have found.

    `p_adjusted` is p corrected over a family of `family` tests (p itself in a family of one); `mde` the smallest
    |a − b| the test detects with 80% power at this n and the observed spread; `sizes` the units behind each
    side, (n,) for pairs or configurations, (n_a, n_b) for two samples, counted in `difference.unit`.
    """

    difference: Interval
    p: float
    p_adjusted: float
    mde: float
    test: str
    sizes: tuple[int, ...]
    family: int = 1

    @property
    def detected(self) -> bool:
        """The difference is beyond noise at the interval's level, after the family's correction."""
        return bool(self.p_adjusted < 1 - self.difference.level)

    def row(self) -> dict[str, Any]:
        """The comparison as table columns, which from_row reads back."""
        return {**self.difference.columns("difference"), "p": self.p, "p_adjusted": self.p_adjusted,
                "family": self.family, "detected": self.detected, "mde": self.mde, "n": self.sizes[0],
                "n_b": self.sizes[1] if len(self.sizes) > 1 else math.nan, "unit": self.difference.unit,
                "test": self.test}

    @classmethod
    def from_row(cls, row: Mapping[str, Any], level: float = 0.95) -> Comparison:
        """The Comparison that row() wrote into a table row."""
        sizes = (int(row["n"]),) if pd.isna(row["n_b"]) else (int(row["n"]), int(row["n_b"]))
        d = replace(Interval.from_columns(row, "difference", min(sizes), str(row["unit"])), level=level)
        return cls(d, float(row["p"]), float(row["p_adjusted"]), float(row["mde"]), str(row["test"]), sizes,
                   int(row["family"]))


@functools.lru_cache
def _standardised_mde(n: int, n_b: int | None, alpha: float, power: float) -> float:
    """The detectable difference in units of the spread; cached, as simulations ask for the same n many times."""
    with warnings.catch_warnings():  # at n = 2 the solver may warn on its way to a large answer
        warnings.simplefilter("ignore")
        if n_b is None:
            return float(np.squeeze(TTestPower().solve_power(nobs=n, alpha=alpha, power=power)))
        return float(np.squeeze(TTestIndPower().solve_power(nobs1=n, ratio=n_b / n, alpha=alpha, power=power)))


def detectable_difference(sd: float, n: int, n_b: int | None = None, level: float = 0.95,
                          power: float = POWER) -> float:
    """The smallest true difference a two-sided t-test finds with `power`, for spread sd (of the pairs' differences
    with n pairs; of each sample with n and n_b values); nan where n is too small to say."""
    if n < 2 or (n_b is not None and n_b < 2) or not math.isfinite(sd):
        return math.nan
    return _standardised_mde(int(n), None if n_b is None else int(n_b), 1 - level, power) * sd


def _one_sample(differences: np.ndarray, unit: str, level: float, test: str) -> Comparison:
    """The mean of differences, its t-interval and t-test against 0, and its detectable difference."""
    d = mean_interval(differences, level, unit)
    if d.n < 2:
        return Comparison(d, math.nan, math.nan, math.nan, test, (d.n,))
    p = float(sps.ttest_1samp(differences, 0.0).pvalue)
    return Comparison(d, p, p, detectable_difference(float(np.std(differences, ddof=1)), d.n, level=level), test,
                      (d.n,))


def paired_test(a: ArrayLike, b: ArrayLike, unit: str = "seeds", level: float = 0.95) -> Comparison:
    """Paired t-test of a − b over matched pairs (two Series are matched on their index, e.g. seed): the shared
    unit's effect cancels, so it is the test for conditions run on the same seeds."""
    a, b = _matched(a, b)
    return _one_sample(a - b, unit, level, "paired t-test")


def welch_test(a: ArrayLike, b: ArrayLike, unit: str = "seeds", level: float = 0.95) -> Comparison:
    """Welch's t-test of mean(a) − mean(b) for independent samples (unequal variances): the test when a and b
    share no units; the interval's n is the smaller sample."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    mean = float(a.mean() - b.mean())
    if min(a.size, b.size) < 2:
        return Comparison(Interval(mean, mean, mean, 1, math.nan, level, unit), math.nan, math.nan, math.nan,
                          "Welch t-test", (a.size, b.size))
    result = sps.ttest_ind(a, b, equal_var=False)
    ci = result.confidence_interval(level)
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    d = Interval(mean, float(ci.low), float(ci.high), min(a.size, b.size), se, level, unit)
    pooled = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
    p = float(result.pvalue)
    return Comparison(d, p, p, detectable_difference(pooled, a.size, b.size, level), "Welch t-test",
                      (a.size, b.size))


def nested_test(values: ArrayLike, clusters: ArrayLike, unit: str = "configurations", within: str = "seeds",
                level: float = 0.95, method: str = "means") -> Comparison:
    """Mean of values (e.g. seed-paired differences) and its t-test against 0 where the independent unit is the
    cluster (configuration), not the row: rows of one cluster share its effect.

    "means": each cluster's mean, then a t-interval over clusters (exact when every cluster has the same rows);
    "mixed": statsmodels' MixedLM with a random intercept per cluster (weights unequal clusters), t with
    clusters − 1 degrees of freedom. The interval's unit reads "7 configurations x 5 seeds".
    """
    frame = pd.DataFrame({"v": np.asarray(values, dtype=float), "c": np.asarray(clusters)})
    means, rows = frame.groupby("c")["v"].mean(), frame.groupby("c").size()
    k = len(means)
    per = f"{rows.min()}" if rows.min() == rows.max() else f"{rows.min()}–{rows.max()}"
    label = f"{unit} x {per} {within}"
    if method == "means":
        return _one_sample(means.to_numpy(), label, level, f"t-test over the {unit}' means")
    if method != "mixed":
        raise ValueError(f"method must be 'means' or 'mixed', got {method!r}")
    with warnings.catch_warnings():  # a cluster variance at its bound 0 warns; the fit is still the answer
        warnings.simplefilter("ignore")
        fit = MixedLM(frame["v"].to_numpy(), np.ones((len(frame), 1)), groups=frame["c"].to_numpy()).fit(reml=True)
    mean, se = float(fit.fe_params[0]), float(fit.bse_fe[0])
    half = float(sps.t.ppf((1 + level) / 2, k - 1)) * se
    p = float(2 * sps.t.sf(abs(mean / se), k - 1))
    d = Interval(mean, mean - half, mean + half, k, se, level, label)
    return Comparison(d, p, p, detectable_difference(se * math.sqrt(k), k, level=level),
                      f"mixed model, random intercept per {unit.rstrip('s')}", (k,))


def holm(p: ArrayLike, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Holm-adjusted p-values of a family of tests and which are detected (adjusted p < 1 − level).

    A test that gave no p (nan) still counts in the family, as p = 1, and stays nan and undetected.
    """
    p = np.asarray(p, dtype=float)
    if p.size == 0:
        return p, np.zeros(0, dtype=bool)
    adjusted = multipletests(np.where(np.isnan(p), 1.0, p), alpha=1 - level, method="holm")[1]
    adjusted = np.where(np.isnan(p), np.nan, adjusted)
    return adjusted, adjusted < 1 - level


def holm_family(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons of one family (e.g. every reset and graft test) with Holm-adjusted p over all of them."""
    adjusted, _ = holm([c.p for c in comparisons])
    return [replace(c, p_adjusted=float(q), family=len(comparisons)) for c, q in zip(comparisons, adjusted)]


def strictest_power(c: Comparison) -> Comparison:
    """The comparison with its detectable difference at the Bonferroni level α/m, Holm's strictest step: a true
    difference that large is found with 80% power however many of the family's other tests are null."""
    d = c.difference
    return replace(c, mde=detectable_difference(d.stderr * math.sqrt(d.n), d.n, level=1 - (1 - d.level) / c.family))


def proportion_interval(successes: int, total: int, level: float = 0.95, unit: str = "") -> Interval:
    """Wilson interval of a fraction successes/total (statsmodels): unlike p ± z·se it stays inside [0, 1] and
    covers near 0 and 1 and at small totals."""
    if total < 1:
        raise ValueError(f"proportion_interval needs a total of at least 1, got {total}")
    share = successes / total
    low, high = proportion_confint(successes, total, alpha=1 - level, method="wilson")
    return Interval(share, float(low), float(high), int(total), math.sqrt(share * (1 - share) / total), level, unit)


# Words that follow the numbers


def _p_text(c: Comparison) -> str:
    def p(x: float) -> str:
        return "p < 0.001" if x < 0.001 else f"p = {x:.2g}"
    if c.family > 1:
        return f"{p(c.p)}, Holm-adjusted {p(c.p_adjusted)} over {c.family} tests"
    return p(c.p)


def in_words(c: Comparison, a: str, b: str, lower_is_better: bool = False, metric: str = "") -> str:
    """The sentence a report states for a comparison of a and b: which is better and by how much where the test
    detects it, else that no difference was detected at this n and what the run could have detected."""
    d = c.difference
    n = f"n = {' and '.join(str(s) for s in c.sizes)} {d.unit}".rstrip()
    if math.isnan(c.p):
        return f"{a} against {b}: no test at {n} ({a} − {b} = {d.mean:.4g})"
    fmt = _decimals((d.high - d.low) / 2)
    what = f" in {metric}" if metric else ""
    if c.detected:
        a_wins = (d.mean < 0) == lower_is_better
        winner, loser = (a, b) if a_wins else (b, a)
        low, high = sorted((abs(d.low), abs(d.high)))
        return (f"{winner} better than {loser}{what} by {abs(d.mean):{fmt}} ({d.level * 100:g}% CI {low:{fmt}} to "
                f"{high:{fmt}}, {_p_text(c)}, {n})")
    power = (f"; the run could detect differences of about {c.mde:.2g} with {POWER:.0%} power"
             if math.isfinite(c.mde) else "")
    return (f"no difference between {a} and {b}{what} detected at {n} ({a} − {b}: {d.level * 100:g}% CI "
            f"{d.low:{fmt}} to {d.high:{fmt}}, {_p_text(c)}{power})")


# Bootstrap


def _resamples(n_rows: int, groups: ArrayLike | None, n: int, seed: int) -> Iterator[np.ndarray]:
    """Row indices of n bootstrap resamples, each drawing whole groups (or single rows) with replacement."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_rows) if groups is None else np.asarray(groups)
    if len(labels) != n_rows:
        raise ValueError(f"groups has {len(labels)} labels for {n_rows} rows")
    _, which = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(which == g) for g in range(which.max() + 1)]
    for _ in range(n):
        yield np.concatenate([members[g] for g in rng.integers(len(members), size=len(members))])


def _units(n_rows: int, groups: ArrayLike | None) -> int:
    """How many independent units a bootstrap resamples: groups (e.g. seeds), else rows."""
    return n_rows if groups is None else len(set(np.asarray(groups).tolist()))


def _percentile(estimate: float, draws: np.ndarray, units: int, level: float) -> Interval:
    """Percentile interval around `estimate` from bootstrap draws; resamples that failed (nan) are skipped."""
    draws = draws[np.isfinite(draws)]
    if draws.size < 2:
        return Interval(estimate, math.nan, math.nan, units, math.nan, level)
    low, high = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)])
    return Interval(estimate, float(low), float(high), units, float(draws.std(ddof=1)), level)


def bootstrap(data: ArrayLike | pd.DataFrame, statistic: Callable, n: int = 2000, level: float = 0.95,
              seed: int = 0, groups: ArrayLike | str | None = None) -> Interval:
    """Percentile interval of statistic(data), resampling rows, or whole groups (e.g. seeds) when given.

    `groups` is one label per row, or a column name of a DataFrame; the same seed gives the same interval.
    (scipy.stats.bootstrap resamples rows only, and a failed refit's nan would spoil its interval.)
    """
    if isinstance(data, pd.DataFrame):
        groups = data[groups].to_numpy() if isinstance(groups, str) else groups
        take = data.iloc.__getitem__
    else:
        data = np.asarray(data, dtype=float)
        take = data.__getitem__
    draws = np.array([statistic(take(i)) for i in _resamples(len(data), groups, n, seed)], dtype=float)
    return _percentile(float(statistic(data)), draws, _units(len(data), groups), level)


# Curves


def _sorted(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"x and y must be non-empty and of one length, got {x.size} and {y.size}")
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def threshold_crossing(x: ArrayLike, y: ArrayLike, level: float) -> float:
    """Where y (falling with x, e.g. accuracy vs corruption p) first drops below `level`, interpolated linearly.

    Returns max(x) when y never drops below level, and min(x) when it is already below at the first point.
    """
    x, y = _sorted(x, y)
    below = np.flatnonzero(y < level)
    if below.size == 0:
        return float(x[-1])
    i = below[0]
    if i == 0:
        return float(x[0])
    return float(x[i - 1] + (y[i - 1] - level) / (y[i - 1] - y[i]) * (x[i] - x[i - 1]))


def area_under(x: ArrayLike, y: ArrayLike) -> float:
    """Trapezoid area under y over the x-range divided by that range: the curve's mean level."""
    x, y = _sorted(x, y)
    if x[-1] == x[0]:
        raise ValueError("area_under needs at least two distinct x")
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def plateau_start(x: ArrayLike, y: ArrayLike, rate: float, window: float) -> float | None:
    """The first x after which a falling curve (e.g. loss vs epochs) improves by less than `rate` of itself per
    `window` x-units (0.01 and 100: 1% per 100 epochs), over every full window of the curve that follows.

    None when the curve is not flat yet: a window ending at its last point still improves by `rate` or more, or
    the curve is shorter than one window. y between evaluated x is interpolated linearly.
    """
    if rate <= 0 or window <= 0:
        raise ValueError(f"rate and window must be positive, got {rate} and {window}")
    x, y = _sorted(x, y)
    starts = x[x + window <= x[-1]]
    if starts.size == 0:
        return None
    ahead = np.interp(starts + window, x, y)
    fast = (y[: starts.size] - ahead) >= rate * np.abs(y[: starts.size])
    if fast[-1]:
        return None
    return float(starts[np.flatnonzero(fast)[-1] + 1] if fast.any() else starts[0])


# Rankings and fronts


def pareto_front(frame: pd.DataFrame, cost: str, value: str) -> pd.DataFrame:
    """Rows no other row dominates (cost as low and value as high, one strictly better), sorted by cost.

    Rows with a missing cost or value are dropped first; the original index is kept.
    """
    frame = frame.dropna(subset=[cost, value])
    c, v = frame[cost].to_numpy(dtype=float), frame[value].to_numpy(dtype=float)
    # [i, j] compares row j with row i: no worse on both, better on one, is dominance
    no_worse = (c[None, :] <= c[:, None]) & (v[None, :] >= v[:, None])
    better = (c[None, :] < c[:, None]) | (v[None, :] > v[:, None])
    return frame[~(no_worse & better).any(axis=1)].sort_values([cost, value], ascending=[True, False], kind="stable")

