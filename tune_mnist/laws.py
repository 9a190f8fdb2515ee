"""Scaling laws with their uncertainty and their fit: a power law in one variable, the joint law in width and data
fitted robustly (Hoffmann et al. 2022) with a goodness-of-fit statement, and the compute-matched choice it allows.

Pure functions of numbers (numpy, scipy, pandas): no study, run folder or torch in here.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, special
from scipy import stats as sps
from threadpoolctl import threadpool_limits

from tune_mnist.stats import ArrayLike, Interval, _percentile, _resamples, _units, holm

HUBER_DELTA = 1e-3  # Hoffmann et al.'s delta: residuals in log loss beyond 0.1% count linearly, so outliers pull little
MAX_EXPONENT = 5.0
# starts of the fit (E as a share of the lowest loss, the exponents, each term's size around half the mean loss)
START_E, START_EXPONENTS, START_SIZES = (0.0, 0.5), (0.25, 1.0), (-1.0, 1.0)


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
    """y = E + A·w^(−α) + B·f^(−β) in width w and data fraction f, and how well it fits.

    `reason` says why a fit failed, else "". `E_at_bound`: the fit put E at its bound 0, so the data cannot tell E
    from 0 and E's interval is one-sided. The fit's quality: `rmse` of log residuals; the lack-of-fit F-test of
    the law's least-squares fit against the spread between seeds of a cell (`lack_of_fit_F` on `lack_of_fit_df`
    and `pure_error_df` degrees of freedom, `lack_of_fit_p`; nan without cells of >= 2 seeds); `systematic` names
    the fractions whose log residuals trend with width (Holm-corrected slopes, `trend`), "" where none do.
    `residuals` are log y − log fit, one per input row.
    """

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    E_interval: Interval
    alpha_interval: Interval
    beta_interval: Interval
    reason: str = ""
    E_at_bound: bool = False
    rmse: float = math.nan
    lack_of_fit_F: float = math.nan
    lack_of_fit_p: float = math.nan
    lack_of_fit_df: int = 0
    pure_error_df: int = 0
    systematic: str = ""
    level: float = 0.95
    residuals: np.ndarray | None = field(default=None, compare=False, repr=False)
    trend: pd.DataFrame | None = field(default=None, compare=False, repr=False)

    def predict(self, w: ArrayLike, f: ArrayLike) -> np.ndarray:
        w, f = np.asarray(w, dtype=float), np.asarray(f, dtype=float)
        return self.E + self.A * w ** -self.alpha + self.B * f ** -self.beta

    @property
    def rejected(self) -> str:
        """Why no conclusion may be drawn from this law ("" when none): the fit failed, or its one test of fit
        rejects it, the lack-of-fit test where cells have >= 2 seeds, else the residuals' trend with width (one
        test, so that a law that fits is rejected at the stated level only)."""
        if self.reason:
            return self.reason
        if self.lack_of_fit_p < 1 - self.level:
            return (f"lack of fit: F({self.lack_of_fit_df}, {self.pure_error_df}) = {self.lack_of_fit_F:.3g}, "
                    f"p = {self.lack_of_fit_p:.2g} against the spread between seeds")
        if math.isnan(self.lack_of_fit_p) and self.systematic:
            return f"systematic residuals: {self.systematic}"
        return ""

    def __str__(self) -> str:
        if self.reason:
            return f"no joint fit: {self.reason}"
        E = (f"E = 0 at its bound (95% upper limit {self.E_interval.high:.3g})" if self.E_at_bound
             else f"E = {self.E_interval}")
        return (f"y = {self.E:.4g} + {self.A:.4g}·w^(−α) + {self.B:.4g}·f^(−β); "
                f"α = {self.alpha_interval}; β = {self.beta_interval}; {E}")


def _log_fit(p: np.ndarray, lw: np.ndarray, lf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log of the law at p = (E, log A, α, log B, β), its width term, its data term), w and f given as logs."""
    E, logA, alpha, logB, beta = p
    tw, tf = np.exp(logA - alpha * lw), np.exp(logB - beta * lf)
    return np.log(E + tw + tf), tw, tf


def _huber_fit(lw: np.ndarray, lf: np.ndarray, ly: np.ndarray, start: np.ndarray,
               bounds: list[tuple[float, float]]) -> optimize.OptimizeResult:
    """L-BFGS-B from `start` on (E, log A, α, log B, β): the summed Huber loss of log-residuals, with its gradient."""
    def objective(p: np.ndarray) -> tuple[float, np.ndarray]:
        log_fit, tw, tf = _log_fit(p, lw, lf)
        r = log_fit - ly
        slope = np.clip(r, -HUBER_DELTA, HUBER_DELTA) / np.exp(log_fit) / HUBER_DELTA  # d huber / d law, scaled
        gradient = [slope.sum(), (slope * tw).sum(), -(slope * tw * lw).sum(), (slope * tf).sum(),
                    -(slope * tf * lf).sum()]
        return float(special.huber(HUBER_DELTA, r).sum() / HUBER_DELTA), np.array(gradient)

    return optimize.minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds,
                             options={"maxiter": 5000, "ftol": 1e-13, "gtol": 1e-10})


def _starts(y: np.ndarray) -> list[np.ndarray]:
    """The grid of starting points: every combination of E, exponents and term sizes."""
    starts = []
    for share, alpha, beta, a, b in itertools.product(START_E, START_EXPONENTS, START_EXPONENTS, START_SIZES,
                                                      START_SIZES):
        E = share * y.min()
        size = math.log((y.mean() - E) / 2)
        starts.append(np.array([E, size + a, alpha, size + b, beta]))
    return starts


def _lack_of_fit(cells: np.ndarray, r: np.ndarray, params: int) -> tuple[float, float, int, int]:
    """(F, p, lack-of-fit df, pure-error df): the residuals' spread between cells' means against within cells."""
    _, cell = np.unique(cells, axis=0, return_inverse=True)
    cell = cell.ravel()
    means = np.bincount(cell, r) / np.bincount(cell)
    pure = float(((r - means[cell]) ** 2).sum())
    pure_df, lof_df = len(r) - int(cell.max()) - 1, int(cell.max()) + 1 - params
    if pure_df < 1 or lof_df < 1 or pure == 0:
        return math.nan, math.nan, max(lof_df, 0), max(pure_df, 0)
    F = ((float((r ** 2).sum()) - pure) / lof_df) / (pure / pure_df)
    return F, float(sps.f.sf(F, lof_df, pure_df)), lof_df, pure_df


def _residual_trend(w: np.ndarray, f: np.ndarray, r: np.ndarray, level: float = 0.95) -> pd.DataFrame:
    """Per fraction with >= 3 widths: the slope of log residuals against log width, its p, Holm over fractions.

    A law that fits leaves no trend; "at small data wider nets are worse" shows as rising slopes at small f.
    """
    rows = []
    for fraction in np.unique(f):
        at = f == fraction
        if len(np.unique(w[at])) >= 3:
            fit = sps.linregress(np.log(w[at]), r[at])
            rows.append({"fraction": fraction, "slope": fit.slope, "p": fit.pvalue})
    trend = pd.DataFrame(rows, columns=["fraction", "slope", "p"])
    trend["p_holm"], trend["detected"] = holm(trend["p"], level)
    return trend


def _systematic(trend: pd.DataFrame) -> str:
    """The detected trends in words, "" where there are none."""
    parts = []
    for rising, word in ((True, "rise"), (False, "fall")):
        found = trend[trend["detected"] & ((trend["slope"] > 0) == rising)]["fraction"]
        if len(found):
            parts.append(f"log residuals {word} with width at fraction {', '.join(f'{x:g}' for x in found)}")
    return "; ".join(parts) + f" (Holm over {len(trend)} fractions)" if parts else ""


def joint_power_law(w: ArrayLike, f: ArrayLike, y: ArrayLike, seeds: ArrayLike | None = None,
                    level: float = 0.95, n: int = 200, seed: int = 0) -> JointLaw:
    """Fits y = E + A·w^(−α) + B·f^(−β) (E >= 0) robustly and says how well it fits.

    As Hoffmann et al. 2022: a Huber loss (delta 1e-3) of log-residuals minimised by L-BFGS-B from a grid of starts,
    the best kept. Bootstrap intervals for α, β, E over seeds (or points), each resample refitted from the best
    fit; with 3 seeds there are only 10 distinct resamples, so read them as a floor. Needs >= 3 widths and >= 3
    fractions (2 levels cannot separate a term's size from its exponent); a grid too small, or a fit that
    fails, gives nan values and the reason in `reason`. Lack of fit needs cells with >= 2 seeds.
    """
    w, f, y = _positive("w", w), _positive("f", f), _positive("y", y)
    # geometric means as units make every term about its coefficient, so one grid of starts fits any scale
    w0, f0 = float(np.exp(np.log(w).mean())), float(np.exp(np.log(f).mean()))
    lw, lf, ly = np.log(w / w0), np.log(f / f0), np.log(y)
    units = _units(len(y), seeds)
    if len(set(w)) < 3 or len(set(f)) < 3:
        nan = Interval(math.nan, math.nan, math.nan, units, math.nan, level)
        reason = f"needs at least 3 widths and 3 fractions, got {len(set(w))} and {len(set(f))}"
        return JointLaw(*[math.nan] * 5, nan, nan, nan, reason, level=level)
    bounds = [(0.0, float(y.min())), (-30.0, 30.0), (0.0, MAX_EXPONENT), (-30.0, 30.0), (0.0, MAX_EXPONENT)]
    # five parameters: BLAS threads only contend, and on a busy machine make each fit 100x slower
    with threadpool_limits(1, user_api="blas"):
        p = min((_huber_fit(lw, lf, ly, s, bounds) for s in _starts(y)), key=lambda fit: fit.fun).x
        refits = (_huber_fit(lw[i], lf[i], ly[i], p, bounds) for i in _resamples(len(y), seeds, n, seed))
        draws = np.array([fit.x if fit.success else np.full(5, math.nan) for fit in refits]).reshape(-1, 5)
        # the lack-of-fit test's reference is the law's least-squares fit (a Huber fit leaves more squared misfit)
        squares = optimize.least_squares(lambda q: _log_fit(q, lw, lf)[0] - ly, p, bounds=tuple(zip(*bounds))).x
    E, logA, alpha, logB, beta = (float(v) for v in p)
    law = JointLaw(E, math.exp(logA) * w0 ** alpha, alpha, math.exp(logB) * f0 ** beta, beta,
                   _percentile(E, draws[:, 0], units, level), _percentile(alpha, draws[:, 2], units, level),
                   _percentile(beta, draws[:, 4], units, level), E_at_bound=E == 0.0, level=level)
    r = ly - np.log(law.predict(w, f))
    F, p_lof, lof_df, pure_df = _lack_of_fit(np.column_stack([w, f]), ly - _log_fit(squares, lw, lf)[0], params=5)
    trend = _residual_trend(w, f, r, level)
    return JointLaw(**{**vars(law), "rmse": float(np.sqrt((r ** 2).mean())), "lack_of_fit_F": F,
                       "lack_of_fit_p": p_lof, "lack_of_fit_df": lof_df, "pure_error_df": pure_df,
                       "systematic": _systematic(trend), "residuals": r, "trend": trend})


def compute_matched(law: JointLaw, width: ArrayLike, fraction: ArrayLike, compute: ArrayLike) -> pd.DataFrame:
    """Per grid cell: is twice the compute better spent on more data or on a wider net, by the law?

    `compute` is the cost of each row's run (e.g. multiply-adds x steps); its exponents in width and fraction
    (a least-squares plane in logs over the cells) say how far twice the compute goes each way: data x
    2^(1/c_f), width x 2^(1/c_w). Columns: width, fraction, compute, predicted, data_factor, width_factor,
    more_data, more_width (the law's loss either way), better ("data", "width", or "unknown" with nan losses
    where the law is rejected), outside_grid (either choice extrapolates past the largest width or fraction).
    """
    cells = (pd.DataFrame({"width": _positive("width", width), "fraction": _positive("fraction", fraction),
                           "compute": _positive("compute", compute)})
             .groupby(["width", "fraction"], as_index=False)["compute"].mean())
    logs = np.log(cells[["width", "fraction"]].to_numpy())
    design = np.column_stack([np.ones(len(cells)), logs])
    _, c_w, c_f = np.linalg.lstsq(design, np.log(cells["compute"].to_numpy()), rcond=None)[0]
    if not (c_w > 0 and c_f > 0):
        raise ValueError(f"compute must grow with width and with data, got exponents {c_w:.3g} and {c_f:.3g}")
    w, f = cells["width"].to_numpy(), cells["fraction"].to_numpy()
    cells["predicted"] = law.predict(w, f)
    cells["data_factor"], cells["width_factor"] = 2 ** (1 / c_f), 2 ** (1 / c_w)
    cells["more_data"] = law.predict(w, f * cells["data_factor"])
    cells["more_width"] = law.predict(w * cells["width_factor"], f)
    cells["better"] = np.where(cells["more_data"] < cells["more_width"], "data", "width")
    if law.rejected:
        cells[["predicted", "more_data", "more_width"]] = math.nan
        cells["better"] = "unknown"
    cells["outside_grid"] = (f * cells["data_factor"] > f.max()) | (w * cells["width_factor"] > w.max())
    return cells
