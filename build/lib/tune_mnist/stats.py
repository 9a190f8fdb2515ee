"""Answers with their uncertainty: intervals, scaling-law fits, crossings and rankings for REPORT.md.

Pure functions of numbers (numpy, scipy, pandas): no study, run folder or torch in here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

ArrayLike = Sequence[float] | np.ndarray | pd.Series


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval: `mean` is the point estimate, `n` the units behind it."""

    mean: float
    low: float
    high: float
    n: int
    stderr: float
    level: float = 0.95

    def excludes(self, x: float) -> bool:
        """True when x lies outside the interval; never for n=1, whose interval says nothing."""
        return self.n > 1 and not self.low <= x <= self.high

    def __str__(self) -> str:
        if self.n == 1:
            return f"{self.mean:.4g} (n=1, no interval)"
        half = (self.high - self.low) / 2
        # two significant digits of the half-width set every number's decimals, as in 0.0931 ± 0.0012
        fmt = f".{max(0, 1 - math.floor(math.log10(half)))}f" if half > 0 else ".4g"
        return (f"{self.mean:{fmt}} ± {half:{fmt}} ({self.level * 100:g}% CI {self.low:{fmt}}–{self.high:{fmt}}, "
                f"n={self.n})")


def mean_interval(values: ArrayLike, level: float = 0.95) -> Interval:
    """Student-t interval of the mean; n=1 gives low=high=mean and stderr nan (one value has no spread)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = float(v.mean())
    if v.size == 1:
        return Interval(mean, mean, mean, 1, math.nan, level)
    se = float(v.std(ddof=1) / math.sqrt(v.size))
    half = float(sps.t.ppf((1 + level) / 2, v.size - 1)) * se
    return Interval(mean, mean - half, mean + half, int(v.size), se, level)


def interval_columns(prefix: str, values: ArrayLike, level: float = 0.95) -> dict[str, float]:
    """mean_interval as table columns: prefix, prefix_low, prefix_high."""
    i = mean_interval(values, level)
    return {prefix: i.mean, f"{prefix}_low": i.low, f"{prefix}_high": i.high}


def paired_difference(a: ArrayLike, b: ArrayLike, level: float = 0.95) -> Interval:
    """t-interval of a−b over matched pairs; two Series are matched on their index (e.g. seed)."""
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        if set(a.index) != set(b.index):
            raise ValueError(f"a and b are not matched: indexes {sorted(a.index)} vs {sorted(b.index)}")
        b = b.reindex(a.index)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"a and b are not matched pairs: {a.size} vs {b.size} values")
    return mean_interval(a - b, level)


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
    """
    if isinstance(data, pd.DataFrame):
        groups = data[groups].to_numpy() if isinstance(groups, str) else groups
        take = data.iloc.__getitem__
    else:
        data = np.asarray(data, dtype=float)
        take = data.__getitem__
    draws = np.array([statistic(take(i)) for i in _resamples(len(data), groups, n, seed)], dtype=float)
    return _percentile(float(statistic(data)), draws, _units(len(data), groups), level)


def _positive(name: str, v: ArrayLike) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    if not (v > 0).all():
        raise ValueError(f"{name} must be positive for a power law (logs), got min {v.min()}")
    return v


def _slope(lx: np.ndarray, ly: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line; nan when x does not vary (a degenerate resample)."""
    if np.ptp(lx) == 0:
        return math.nan, math.nan
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(intercept), float(slope)


@dataclass(frozen=True)
class PowerLaw:
    """y = a·x^(−b), with a bootstrap interval for the exponent b."""

    a: float
    b: float
    b_interval: Interval

    def predict(self, x: ArrayLike) -> np.ndarray:
        return self.a * np.asarray(x, dtype=float) ** -self.b

    def __str__(self) -> str:
        return f"y = {self.a:.4g}·x^(−b), b = {self.b_interval}"


def power_law(x: ArrayLike, y: ArrayLike, seeds: ArrayLike | None = None, level: float = 0.95,
              n: int = 2000, seed: int = 0) -> PowerLaw:
    """Least-squares line through (log x, log y), with b's bootstrap interval over seeds or, without, points.

    Rows sharing a seed move together; with few seeds a percentile bootstrap runs narrow: read it as a floor.
    """
    lx, ly = np.log(_positive("x", x)), np.log(_positive("y", y))
    intercept, slope = _slope(lx, ly)
    if math.isnan(slope):
        raise ValueError("power_law needs at least two distinct x")
    draws = np.array([-_slope(lx[i], ly[i])[1] for i in _resamples(len(lx), seeds, n, seed)])
    units = _units(len(lx), seeds)
    return PowerLaw(math.exp(intercept), -slope, _percentile(-slope, draws, units, level))


@dataclass(frozen=True)
class JointLaw:
    """y = E + A·w^(−α) + B·f^(−β) in width w and data fraction f; `reason` says why a fit failed, else ""."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    E_interval: Interval
    alpha_interval: Interval
    beta_interval: Interval
    reason: str = ""

    def predict(self, w: ArrayLike, f: ArrayLike) -> np.ndarray:
        w, f = np.asarray(w, dtype=float), np.asarray(f, dtype=float)
        return self.E + self.A * w ** -self.alpha + self.B * f ** -self.beta

    def better_doubling(self, w: float, f: float) -> tuple[str, float, float]:
        """("data" or "width", loss at (w, 2f), loss at (2w, f)): which doubling lowers predicted loss more.

        Doubling f=1 extrapolates beyond the full training set; a failed fit gives "unknown" and nan losses.
        """
        if self.reason:
            return "unknown", math.nan, math.nan
        more_data, more_width = float(self.predict(w, 2 * f)), float(self.predict(2 * w, f))
        return ("data" if more_data < more_width else "width"), more_data, more_width

    def __str__(self) -> str:
        if self.reason:
            return f"no joint fit: {self.reason}"
        return (f"y = {self.E:.4g} + {self.A:.4g}·w^(−α) + {self.B:.4g}·f^(−β); "
                f"α = {self.alpha_interval}; β = {self.beta_interval}; E = {self.E_interval}")


def _fit_joint(w: np.ndarray, f: np.ndarray, y: np.ndarray, start: np.ndarray) -> np.ndarray:
    """(E, log A, α, log B, β) minimising squared log-residuals; w, f are scaled to about 1 for conditioning."""
    def residuals(p: np.ndarray) -> np.ndarray:
        E, logA, alpha, logB, beta = p
        return np.log(E + np.exp(logA) * w ** -alpha + np.exp(logB) * f ** -beta) - np.log(y)

    fit = optimize.least_squares(residuals, start, bounds=([0, -30, 0, -30, 0], [np.inf, 30, 10, 30, 10]))
    if not fit.success:
        raise RuntimeError(fit.message)
    return fit.x


def joint_power_law(w: ArrayLike, f: ArrayLike, y: ArrayLike, seeds: ArrayLike | None = None,
                    level: float = 0.95, n: int = 200, seed: int = 0) -> JointLaw:
    """Fits y = E + A·w^(−α) + B·f^(−β) (E ≥ 0) with bootstrap intervals for α, β, E over seeds (or points).

    Needs ≥ 3 widths and ≥ 3 fractions (2 levels cannot separate a term's size from its exponent); a grid
    that is too small, or a fit that fails, gives nan values and intervals with the reason in `reason`.
    With 3 seeds there are only 10 distinct resamples, so the intervals run narrow: read them as a floor.
    """
    w, f, y = _positive("w", w), _positive("f", f), _positive("y", y)
    # geometric means as units make every term about its coefficient, so one start fits any scale
    w0, f0 = float(np.exp(np.log(w).mean())), float(np.exp(np.log(f).mean()))
    ws, fs = w / w0, f / f0
    units = _units(len(y), seeds)

    def failed(reason: str) -> JointLaw:
        nan = Interval(math.nan, math.nan, math.nan, units, math.nan, level)
        return JointLaw(*[math.nan] * 5, nan, nan, nan, reason)

    if len(set(w)) < 3 or len(set(f)) < 3:
        return failed(f"needs at least 3 widths and 3 fractions, got {len(set(w))} and {len(set(f))}")
    E0 = y.min() / 2
    start = np.array([E0, np.log((y.mean() - E0) / 2), 0.5, np.log((y.mean() - E0) / 2), 0.5])
    try:
        p = _fit_joint(ws, fs, y, start)
    except (RuntimeError, ValueError) as e:
        return failed(f"fit failed: {e}")

    def refit(i: np.ndarray) -> np.ndarray:
        try:
            return _fit_joint(ws[i], fs[i], y[i], p)
        except (RuntimeError, ValueError):
            return np.full(5, math.nan)

    draws = np.array([refit(i) for i in _resamples(len(y), seeds, n, seed)])
    E, logA, alpha, logB, beta = p
    return JointLaw(float(E), float(np.exp(logA) * w0 ** alpha), float(alpha), float(np.exp(logB) * f0 ** beta),
                    float(beta), _percentile(float(E), draws[:, 0], units, level),
                    _percentile(float(alpha), draws[:, 2], units, level),
                    _percentile(float(beta), draws[:, 4], units, level))


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


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (nan stays nan and ranks as p=1)."""
    filled = np.where(np.isnan(p), 1.0, p)
    order = np.argsort(filled, kind="stable")
    scaled = np.minimum(1.0, filled[order] * (len(p) - np.arange(len(p))))
    adjusted = np.empty_like(filled)
    adjusted[order] = np.maximum.accumulate(scaled)
    return np.where(np.isnan(p), np.nan, adjusted)


def rank_with_ties(table: pd.DataFrame, value: str, group: str, level: float = 0.95, test: str = "welch",
                   lower_is_better: bool = False) -> pd.DataFrame:
    """Groups best-first with mean and t-interval, and whether the best beats each one beyond noise.

    Each group is tested against the best with a two-sided t-test (Welch's, or "student" for pooled variance),
    Holm-corrected over the comparisons: `p` raw, `p_holm` adjusted, `beaten` when p_holm < 1 − level,
    `tied_with_best` otherwise (the best itself included).
    """
    if test not in ("welch", "student"):
        raise ValueError(f"test must be 'welch' or 'student', got {test!r}")
    samples = {g: v.to_numpy(dtype=float) for g, v in table.groupby(group, sort=False)[value]}
    rows = [{group: g, **vars(mean_interval(v, level))} for g, v in samples.items()]
    ranked = pd.DataFrame(rows).sort_values("mean", ascending=lower_is_better, kind="stable")
    ranked = ranked.drop(columns="level").reset_index(drop=True)
    best = samples[ranked[group].iloc[0]]
    p = np.array([math.nan] + [sps.ttest_ind(best, samples[g], equal_var=test == "student").pvalue
                               for g in ranked[group].iloc[1:]], dtype=float)
    ranked["p"], ranked["p_holm"] = p, np.concatenate([[math.nan], _holm(p[1:])])
    ranked["beaten"] = ranked["p_holm"] < 1 - level
    ranked["tied_with_best"] = ~ranked["beaten"]
    return ranked


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


def plateau(x: ArrayLike, y: ArrayLike, tolerance: float) -> float:
    """The first x from which the rest of the curve gains at most `tolerance` (0.01 = 1%) of y(x).

    That is, the first x with y(x) − min(y over x' ≥ x) ≤ tolerance·|y(x)|, for a falling curve such as loss vs
    epochs; the last point always qualifies, so a curve still falling gives max(x).
    """
    x, y = _sorted(x, y)
    # the first such x is never past the minimum, so the minimum over x' >= x is the overall one
    return float(x[np.flatnonzero(y - y.min() <= tolerance * np.abs(y))[0]])
