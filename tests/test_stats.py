"""tune_mnist.stats on synthetic data whose answers are known."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tune_mnist import stats


def test_interval_is_student_t_and_prints_its_numbers():
    ci = stats.mean_interval([1, 2, 3, 4, 5])
    # t(0.975, 4) = 2.7764 and stderr = sqrt(2.5 / 5)
    assert (ci.mean, ci.n) == (3, 5)
    assert ci.stderr == pytest.approx(math.sqrt(0.5))
    assert (ci.low, ci.high) == pytest.approx((3 - 1.9632, 3 + 1.9632), abs=1e-4)
    assert stats.mean_interval([1, 2, 3, 4, 5], level=0.5).high - 3 == pytest.approx(0.7071 * 0.7407, abs=1e-3)
    assert str(stats.Interval(0.0931, 0.0919, 0.0943, 5, 0.0005)) == "0.0931 ± 0.0012 (95% CI 0.0919–0.0943, n=5)"
    assert ci.excludes(5.1) and ci.excludes(0.9) and not ci.excludes(3)


def test_interval_covers_the_true_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    # a z-interval (1.96) covers only ~87% at n=5; the t-interval covers 95%
    hits = 0
    for _ in range(2000):
        ci = stats.mean_interval(rng.normal(1, 1, 5))
        hits += ci.low <= 1 <= ci.high
    assert 0.93 < hits / 2000 < 0.97
    widths = []
    for n in (5, 20, 80):
        cis = [stats.mean_interval(rng.normal(1, 1, n)) for _ in range(200)]
        widths.append(np.mean([ci.high - ci.low for ci in cis]))
    assert widths[0] > 1.8 * widths[1] > 1.8 * 1.8 * widths[2]


def test_one_value_has_no_spread():
    ci = stats.mean_interval([0.7])
    assert (ci.mean, ci.low, ci.high, ci.n) == (0.7, 0.7, 0.7, 1) and math.isnan(ci.stderr)
    assert not ci.excludes(0.1) and str(ci) == "0.7 (n=1, no interval)"


def test_paired_difference_removes_the_shared_seed_effect():
    rng = np.random.default_rng(1)
    seed_effect = rng.normal(0, 1, 8)
    a = pd.Series(seed_effect + 0.3 + rng.normal(0, 0.01, 8), index=range(8))
    b = pd.Series(seed_effect, index=range(8))
    diff = stats.paired_difference(a, b)
    assert diff.low < 0.3 < diff.high and diff.excludes(0) and diff.high - diff.low < 0.05
    assert stats.paired_difference(a, b[::-1]) == diff  # matched on seed, not position
    with pytest.raises(ValueError):
        stats.paired_difference(a, b.iloc[:7])


def test_bootstrap_is_deterministic_and_resamples_whole_groups():
    # three seeds, each 100 identical rows: the uncertainty is between seeds, not between rows
    frame = pd.DataFrame({"seed": np.repeat([0, 1, 2], 100), "acc": np.repeat([0.0, 1.0, 2.0], 100)
                          + np.random.default_rng(2).normal(0, 0.01, 300)})

    def mean(d: pd.DataFrame) -> float:
        return d["acc"].mean()

    by_seed = stats.bootstrap(frame, mean, groups="seed")
    by_row = stats.bootstrap(frame, mean)
    assert by_seed == stats.bootstrap(frame, mean, groups=frame["seed"].to_numpy())
    assert by_seed.mean == pytest.approx(1.0, abs=0.01) and (by_seed.n, by_row.n) == (3, 300)
    # 1 in 27 resamples draws seed 0 thrice (mean 0), more than the 2.5% tail: the interval is [0, 2]
    assert by_seed.low == pytest.approx(0, abs=0.01) and by_seed.high == pytest.approx(2, abs=0.01)
    assert by_row.high - by_row.low < 0.25
    assert stats.bootstrap(frame, mean, seed=7) != by_row
    values = np.random.default_rng(3).normal(5, 1, 400)
    ci = stats.bootstrap(values, np.mean)
    assert ci.low < 5 < ci.high and ci.high - ci.low == pytest.approx(2 * 1.96 / 20, rel=0.15)


def noisy_power_law(seeds: int) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    x = np.tile([10, 30, 100, 300, 1000, 3000], seeds)
    seed = np.repeat(np.arange(seeds), 6)
    # each seed shifts its whole curve, as a seed does to a run
    y = 2 * x ** -0.5 * np.exp(rng.normal(0, 0.05, seeds)[seed] + rng.normal(0, 0.01, x.size))
    return pd.DataFrame({"x": x, "y": y, "seed": seed})


def test_power_law_recovers_the_exponent():
    d = noisy_power_law(5)
    law = stats.power_law(d["x"], d["y"], seeds=d["seed"])
    assert law.b == pytest.approx(0.5, abs=0.01) and law.a == pytest.approx(2, rel=0.1)
    assert law.b_interval.low < law.b < law.b_interval.high < law.b_interval.low + 0.02 and law.b_interval.n == 5
    assert law.predict([100]) == pytest.approx(0.2, rel=0.1)
    assert str(law).startswith("y = 1.99") and "·x^(−b), b = 0.500" in str(law)


def test_power_law_moves_a_seed_s_rows_together():
    d = noisy_power_law(5)
    by_point = stats.power_law(d["x"], d["y"]).b_interval
    by_seed = stats.power_law(d["x"], d["y"], seeds=d["seed"]).b_interval
    # a seed's offset shifts all its points alike: it blurs b only when its points are resampled apart
    assert by_point.n == 30 and by_seed.high - by_seed.low < 0.5 * (by_point.high - by_point.low)


def test_joint_law_recovers_exponents_floor_and_the_better_doubling():
    rng = np.random.default_rng(5)
    w, f, seed = (g.ravel() for g in np.meshgrid([64, 128, 256, 512], [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1], [0, 1, 2],
                                                 indexing="ij"))
    y = (0.05 + 3 * w ** -0.5 + 0.08 * f ** -0.4) * np.exp(rng.normal(0, 0.01, w.size))
    law = stats.joint_power_law(w, f, y, seeds=seed)
    assert law.reason == ""
    # tolerances hold for 20 noise draws (worst errors 0.042, 0.039, 0.019)
    assert law.alpha == pytest.approx(0.5, abs=0.06) and law.beta == pytest.approx(0.4, abs=0.06)
    assert law.E == pytest.approx(0.05, abs=0.025)
    assert law.alpha_interval.n == 3 and law.alpha_interval.low < law.alpha < law.alpha_interval.high
    assert law.beta_interval.low < law.beta < law.beta_interval.high and law.E_interval.low <= law.E
    assert law.predict(128, 0.25) == pytest.approx(0.05 + 3 / 128 ** 0.5 + 0.08 * 4 ** 0.4, rel=0.02)
    # wide net, little data: the data term dominates; narrow net, all data: the width term does
    choice, more_data, more_width = law.better_doubling(512, 1 / 16)
    assert choice == "data" and more_data < more_width
    assert more_data == pytest.approx(float(law.predict(512, 1 / 8)))
    assert law.better_doubling(64, 1)[0] == "width"


def test_joint_law_on_a_small_grid_says_why_instead_of_crashing():
    law = stats.joint_power_law([64, 64, 128, 128], [0.5, 1, 0.5, 1], [0.3, 0.2, 0.25, 0.15])
    assert "3 widths" in law.reason and math.isnan(law.alpha) and math.isnan(law.alpha_interval.low)
    assert law.better_doubling(128, 1)[0] == "unknown"


def test_threshold_crossing_of_a_line():
    x = np.linspace(0, 1, 11)
    assert stats.threshold_crossing(x, 1 - x, 0.75) == pytest.approx(0.25)
    assert stats.threshold_crossing(x[::-1], (1 - x)[::-1], 0.75) == pytest.approx(0.25)  # any order
    assert stats.threshold_crossing(x, 1 - x / 10, 0.5) == 1.0  # never below: max(x)
    assert stats.threshold_crossing(x, 0.4 - x / 10, 0.5) == 0.0  # below from the start: min(x)


def test_area_under_is_the_mean_level():
    assert stats.area_under([0, 1, 2], [0, 1, 2]) == pytest.approx(1.0)
    assert stats.area_under([2, 0, 1], [2, 0, 1]) == pytest.approx(1.0)  # any order
    assert stats.area_under([0, 1, 3], [0, 1, 1]) == pytest.approx(2.5 / 3)


def test_rank_with_ties_beats_the_different_group_and_ties_the_same():
    rng = np.random.default_rng(6)
    table = pd.DataFrame({"activation": np.repeat(["relu", "gelu", "tanh"], 10),
                          "acc": np.concatenate([rng.normal(0.98, 0.002, 10), rng.normal(0.98, 0.002, 10),
                                                 rng.normal(0.95, 0.002, 10)])})
    ranked = stats.rank_with_ties(table, "acc", "activation")
    assert list(ranked["activation"][2:]) == ["tanh"] and set(ranked["activation"][:2]) == {"relu", "gelu"}
    assert list(ranked["beaten"]) == [False, False, True] and list(ranked["tied_with_best"]) == [True, True, False]
    assert ranked["p"].iloc[2] < 1e-10 and ranked["p"].iloc[1] > 0.05 and math.isnan(ranked["p"].iloc[0])
    assert ranked["p_holm"].iloc[2] == pytest.approx(2 * ranked["p"].iloc[2], rel=1e-9, abs=0)  # 2 comparisons
    assert ranked["mean"].is_monotonic_decreasing and (ranked["low"] < ranked["mean"]).all()
    low_first = stats.rank_with_ties(table, "acc", "activation", lower_is_better=True)
    assert low_first["activation"].iloc[0] == "tanh" and list(low_first["beaten"]) == [False, True, True]


def test_rank_with_ties_uses_welch_unless_told():
    rng = np.random.default_rng(7)
    a, b = rng.normal(1.0, 0.1, 20), rng.normal(0.9, 0.4, 5)
    table = pd.DataFrame({"g": ["a"] * 20 + ["b"] * 5, "v": np.concatenate([a, b])})
    va, vb = a.var(ddof=1) / 20, b.var(ddof=1) / 5
    t, df = (a.mean() - b.mean()) / math.sqrt(va + vb), (va + vb) ** 2 / (va ** 2 / 19 + vb ** 2 / 4)
    assert stats.rank_with_ties(table, "v", "g")["p"].iloc[1] == pytest.approx(2 * sps.t.sf(abs(t), df))
    assert stats.rank_with_ties(table, "v", "g", test="student")["p"].iloc[1] != pytest.approx(2 * sps.t.sf(abs(t), df))


def test_holm_steps_down():
    # sorted 0.01, 0.012, 0.013 times 3, 2, 1 = 0.03, 0.024, 0.013, then kept from falling: 0.03 each
    assert stats._holm(np.array([0.013, 0.01, 0.012])) == pytest.approx([0.03, 0.03, 0.03])
    assert stats._holm(np.array([0.5, 0.001, 0.4])) == pytest.approx([0.8, 0.003, 0.8])
    assert stats._holm(np.array([np.nan, 0.01])) == pytest.approx([np.nan, 0.02], nan_ok=True)


def test_pareto_front_of_a_hand_made_frame():
    frame = pd.DataFrame({"name": list("dbacefgh"), "params": [300, 200, 100, 150, 200, 400, np.nan, 300],
                          "acc": [0.97, 0.95, 0.90, 0.89, 0.93, 0.96, 0.99, 0.97]})
    front = stats.pareto_front(frame, "params", "acc")
    # c is beaten by a (cheaper, better), e by b (same cost, better), f by d; g has no cost; h ties d
    assert list(front["name"]) == ["a", "b", "d", "h"] and list(front.index) == [2, 1, 0, 7]


def test_plateau_of_an_exponential_decay():
    x = np.arange(0, 201)
    y = 5 * (1 + np.exp(-x / 10))
    # y(x) - y(200) <= 0.01 y(x)  <=>  e^(-x/10) <= 0.01 / 0.99  <=>  x >= 10 ln 99 = 45.95; the scale 5 drops out
    assert stats.plateau(x, y, 0.01) == 46
    assert stats.plateau(x, y, 0.1) == 22  # 10 ln 9 = 21.97
    assert stats.plateau(x, np.exp(-x / 10), 0.01) == 200  # no floor: the rest always gains over 1%
    assert stats.plateau([0, 1, 2, 3, 4], [4, 2, 1, 1.5, 3], 0.01) == 2  # rising again later (overfitting)
