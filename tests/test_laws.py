"""tune_mnist.laws on synthetic surfaces whose laws are known."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from scipy import stats as sps

from tune_mnist import laws, stats

def noisy_power_law(seeds: int) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    x = np.tile([10, 30, 100, 300, 1000, 3000], seeds)
    seed = np.repeat(np.arange(seeds), 6)
    # each seed shifts its whole curve, as a seed does to a run
    y = 2 * x ** -0.5 * np.exp(rng.normal(0, 0.05, seeds)[seed] + rng.normal(0, 0.01, x.size))
    return pd.DataFrame({"x": x, "y": y, "seed": seed})


def test_power_law_recovers_the_exponent():
    d = noisy_power_law(5)
    law = laws.power_law(d["x"], d["y"], seeds=d["seed"])
    assert law.b == pytest.approx(0.5, abs=0.01) and law.a == pytest.approx(2, rel=0.1)
    assert law.b_interval.low < law.b < law.b_interval.high < law.b_interval.low + 0.02 and law.b_interval.n == 5
    assert law.predict([100]) == pytest.approx(0.2, rel=0.1)
    assert str(law).startswith("y = 1.99") and "·x^(−b), b = 0.500" in str(law)


def test_power_law_moves_a_seed_s_rows_together():
    d = noisy_power_law(5)
    by_point = laws.power_law(d["x"], d["y"]).b_interval
    by_seed = laws.power_law(d["x"], d["y"], seeds=d["seed"]).b_interval
    # a seed's offset shifts all its points alike: it blurs b only when its points are resampled apart
    assert by_point.n == 30 and by_seed.high - by_seed.low < 0.5 * (by_point.high - by_point.low)


def test_joint_law_recovers_exponents_and_floor():
    rng = np.random.default_rng(5)
    w, f, seed = (g.ravel() for g in np.meshgrid([64, 128, 256, 512], [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1], [0, 1, 2],
                                                 indexing="ij"))
    y = (0.05 + 3 * w ** -0.5 + 0.08 * f ** -0.4) * np.exp(rng.normal(0, 0.01, w.size))
    law = laws.joint_power_law(w, f, y, seeds=seed)
    assert law.reason == ""
    # tolerances hold for 20 noise draws (worst errors 0.042, 0.039, 0.019)
    assert law.alpha == pytest.approx(0.5, abs=0.06) and law.beta == pytest.approx(0.4, abs=0.06)
    assert law.E == pytest.approx(0.05, abs=0.025)
    assert law.alpha_interval.n == 3 and law.alpha_interval.low < law.alpha < law.alpha_interval.high
    assert law.beta_interval.low < law.beta < law.beta_interval.high and law.E_interval.low <= law.E
    assert law.predict(128, 0.25) == pytest.approx(0.05 + 3 / 128 ** 0.5 + 0.08 * 4 ** 0.4, rel=0.02)


def test_joint_law_on_a_small_grid_says_why_instead_of_crashing():
    law = laws.joint_power_law([64, 64, 128, 128], [0.5, 1, 0.5, 1], [0.3, 0.2, 0.25, 0.15])
    assert "3 widths" in law.reason and math.isnan(law.alpha) and math.isnan(law.alpha_interval.low)
    assert law.rejected == law.reason


def grid(seeds: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5 widths x 5 fractions x seeds, as a scaling run's cells."""
    return tuple(g.ravel() for g in np.meshgrid([32, 64, 128, 256, 512], [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1],
                                                range(seeds), indexing="ij"))


def separable(w: np.ndarray, f: np.ndarray, rng: np.random.Generator, noise: float = 0.01) -> np.ndarray:
    return (0.05 + 3 * w ** -0.5 + 0.08 * f ** -0.4) * np.exp(rng.normal(0, noise, w.size))


def test_the_robust_law_recovers_planted_exponents_and_passes_its_fit_tests():
    w, f, seed = grid()
    law = laws.joint_power_law(w, f, separable(w, f, np.random.default_rng(16)), seeds=seed)
    # tolerances hold for 20 noise draws (worst errors 0.030 and 0.078: the data term is small beside E)
    assert law.alpha == pytest.approx(0.5, abs=0.05) and law.beta == pytest.approx(0.4, abs=0.1)
    assert law.alpha_interval.low < law.alpha < law.alpha_interval.high and not law.E_at_bound
    assert law.rejected == "" and law.lack_of_fit_p > 0.05 and law.systematic == ""
    assert (law.lack_of_fit_df, law.pure_error_df) == (25 - 5, 75 - 25)
    assert law.rmse == pytest.approx(0.01, rel=0.25) and law.residuals.shape == (75,)
    assert list(law.trend["fraction"]) == [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1]


def test_the_lack_of_fit_F_is_the_cells_spread_against_the_seeds():
    cells = np.array([[1, 1], [1, 1], [2, 2], [2, 2], [3, 3], [3, 3]])
    r = np.array([0.1, 0.3, -0.2, 0.0, 0.5, 0.5])
    # cell means 0.2, -0.1, 0.5: pure error 0.04 on 6 - 3 df; lack of fit 2·(0.04 + 0.01 + 0.25) = 0.6 on 3 - 1
    F, p, lof_df, pure_df = laws._lack_of_fit(cells, r, params=1)
    assert (lof_df, pure_df) == (2, 3) and F == pytest.approx((0.6 / 2) / (0.04 / 3))
    assert p == pytest.approx(sps.f.sf(22.5, 2, 3))
    w, f, seed = grid()
    law = laws.joint_power_law(w, f, separable(w, f, np.random.default_rng(17)), seeds=seed, n=0)
    assert law.lack_of_fit_p == pytest.approx(sps.f.sf(law.lack_of_fit_F, 20, 50))
    w, f, _ = grid(1)
    assert math.isnan(laws.joint_power_law(w, f, separable(w, f, np.random.default_rng(0)), n=0).lack_of_fit_p)


def test_the_lack_of_fit_test_rejects_a_surface_where_wider_is_worse_at_small_data():
    w, f, seed = grid()
    # at the two smallest fractions every doubling of width costs 0.03 of loss: no separable law has that
    y = separable(w, f, np.random.default_rng(18)) + 0.03 * np.log2(w / 32) * (f < 0.2)
    law = laws.joint_power_law(w, f, y, seeds=seed, n=20)
    assert law.lack_of_fit_p < 1e-3 and law.rejected.startswith("lack of fit: F(20, 50)")
    assert "rise with width at fraction 0.0625, 0.125" in law.systematic
    matched = laws.compute_matched(law, w, f, w ** 2 * f)
    assert (matched["better"] == "unknown").all() and matched["more_data"].isna().all()


def test_the_huber_fit_shrugs_off_a_broken_run():
    w, f, seed = grid()
    y = separable(w, f, np.random.default_rng(19), noise=0.005)
    y[(w == 512) & (f == 1 / 16) & (seed == 0)] *= 1.5  # one run that went wrong
    law = laws.joint_power_law(w, f, y, seeds=seed, n=0)

    def log_residuals(p: np.ndarray) -> np.ndarray:
        return np.log(p[0] + p[1] * w ** -p[2] + p[3] * f ** -p[4]) - np.log(y)

    squares = optimize.least_squares(log_residuals, [0.05, 3, 0.5, 0.08, 0.4], bounds=(0, np.inf)).x
    assert abs(law.alpha - 0.5) < 0.03 and abs(law.beta - 0.4) < 0.03
    assert abs(squares[2] - 0.5) + abs(squares[4] - 0.4) > 3 * (abs(law.alpha - 0.5) + abs(law.beta - 0.4))


def test_an_E_at_its_bound_is_said_to_be_there():
    w, f, seed = grid()
    # a floor below 0: the fit holds E at its bound (so in 20 of 20 noise draws)
    y = (3 * w ** -0.5 + 0.1 * f ** -0.5 - 0.02) * np.exp(np.random.default_rng(20).normal(0, 0.01, w.size))
    law = laws.joint_power_law(w, f, y, seeds=seed, n=50)
    assert law.E_at_bound and law.E == 0 and law.E_interval.low == 0 and law.E_interval.high < 0.05
    assert "E = 0 at its bound (95% upper limit" in str(law)


def test_compute_matched_spends_twice_the_compute_either_way():
    nan = stats.Interval(math.nan, math.nan, math.nan, 3, math.nan)
    law = laws.JointLaw(0.0, 10.0, 1.0, 0.1, 0.5, nan, nan, nan)
    w, f = (g.ravel() for g in np.meshgrid([16, 64, 256], [0.25, 0.5, 1.0], indexing="ij"))
    # multiply-adds grow as w^2, steps as f: twice the compute is twice the data or sqrt(2) times the width
    matched = laws.compute_matched(law, w, f, 7 * w ** 2 * f).set_index(["width", "fraction"])
    assert list(matched["data_factor"]) == pytest.approx([2] * 9)
    assert list(matched["width_factor"]) == pytest.approx([2 ** 0.5] * 9)
    narrow, wide = matched.loc[(16, 0.25)], matched.loc[(256, 0.25)]
    assert narrow["more_data"] == pytest.approx(10 / 16 + 0.1 * 0.5 ** -0.5)  # 0.766
    assert narrow["more_width"] == pytest.approx(10 / (16 * 2 ** 0.5) + 0.1 * 0.25 ** -0.5)  # 0.642
    assert narrow["better"] == "width" and wide["better"] == "data"
    assert not narrow["outside_grid"] and matched.loc[(16, 1.0), "outside_grid"] and wide["outside_grid"]
    rejected = laws.JointLaw(0.0, 1.0, 1.0, 1.0, 0.5, nan, nan, nan, lack_of_fit_F=9.0, lack_of_fit_p=0.001,
                             lack_of_fit_df=4, pure_error_df=9)
    assert (laws.compute_matched(rejected, w, f, w ** 2 * f)["better"] == "unknown").all()
    with pytest.raises(ValueError):
        laws.compute_matched(law, w, f, 1 / w)


@pytest.mark.slow
def test_a_separable_surface_is_rejected_at_about_the_test_s_level():
    rng = np.random.default_rng(21)
    w, f, seed = grid()
    rejected = [bool(laws.joint_power_law(w, f, separable(w, f, rng), seeds=seed, n=0).rejected) for _ in range(200)]
    w, f, _ = grid(1)  # one seed a cell: the residuals' trend is the test
    by_trend = [bool(laws.joint_power_law(w, f, separable(w, f, rng), n=0).rejected) for _ in range(200)]
    assert np.mean(rejected) <= 0.10 and np.mean(by_trend) <= 0.10


def test_without_replicates_a_trend_in_the_residuals_rejects_the_law():
    w, f, _ = grid(1)
    y = separable(w, f, np.random.default_rng(22)) + 0.03 * np.log2(w / 32) * (f < 0.2)
    law = laws.joint_power_law(w, f, y, n=0)
    assert math.isnan(law.lack_of_fit_p) and law.rejected.startswith("systematic residuals: log residuals rise")
