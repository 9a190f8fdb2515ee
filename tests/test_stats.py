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
    # on rows alone it is scipy's percentile bootstrap, up to the resampling noise (kept for groups and failed fits)
    scipy_ci = sps.bootstrap((values,), np.mean, n_resamples=2000, method="percentile", rng=0).confidence_interval
    assert (ci.low, ci.high) == pytest.approx((scipy_ci.low, scipy_ci.high), abs=0.1 * (ci.high - ci.low))


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


def hand_holm(p: np.ndarray) -> np.ndarray:
    """The step-down Holm that stats carried before statsmodels did it: the reference for the same numbers."""
    filled = np.where(np.isnan(p), 1.0, p)
    order = np.argsort(filled, kind="stable")
    scaled = np.minimum(1.0, filled[order] * (len(p) - np.arange(len(p))))
    adjusted = np.empty_like(filled)
    adjusted[order] = np.maximum.accumulate(scaled)
    return np.where(np.isnan(p), np.nan, adjusted)


def test_holm_steps_down_as_the_hand_written_one_did(frozen_gc):
    # sorted 0.01, 0.012, 0.013 times 3, 2, 1 = 0.03, 0.024, 0.013, then kept from falling: 0.03 each
    assert stats.holm([0.013, 0.01, 0.012])[0] == pytest.approx([0.03, 0.03, 0.03])
    assert stats.holm([0.5, 0.001, 0.4])[0] == pytest.approx([0.8, 0.003, 0.8])
    adjusted, detected = stats.holm([np.nan, 0.01])
    assert adjusted == pytest.approx([np.nan, 0.02], nan_ok=True) and list(detected) == [False, True]
    rng = np.random.default_rng(8)
    for _ in range(200):
        p = rng.uniform(0, 0.2, rng.integers(1, 15)) ** 2
        p[rng.uniform(size=p.size) < 0.1] = np.nan
        adjusted, detected = stats.holm(p)
        assert adjusted == pytest.approx(hand_holm(p), rel=1e-12, nan_ok=True)
        assert (detected == (hand_holm(p) < 0.05)).all()


def null_tests(rng: np.random.Generator, k: int) -> list[stats.Comparison]:
    """k paired tests of conditions that do not differ, 5 seeds each."""
    return [stats.paired_test(rng.normal(0, 1, 5), rng.normal(0, 1, 5)) for _ in range(k)]


def test_holm_holds_the_family_wise_error_and_still_finds_a_real_effect(frozen_gc):
    rng = np.random.default_rng(9)
    any_false, any_uncorrected = 0, 0
    for _ in range(200):
        family = stats.holm_family(null_tests(rng, 12))
        any_false += any(c.detected for c in family)
        any_uncorrected += any(c.p < 0.05 for c in family)
    # 12 tests at 5%: about 46% of null families have a raw p < 0.05; Holm keeps it at 5%
    assert any_false / 200 <= 0.10 and any_uncorrected / 200 > 0.3
    seed = rng.normal(0, 1, 8)
    real = stats.paired_test(seed + 1.0 + rng.normal(0, 0.1, 8), seed + rng.normal(0, 0.1, 8))
    family = stats.holm_family([real, *null_tests(rng, 11)])
    assert family[0].detected and family[0].family == 12 and family[0].p_adjusted <= 12 * real.p
    assert family[0].p_adjusted == pytest.approx(hand_holm(np.array([c.p for c in family]))[0])


def test_paired_test_is_scipy_s_and_states_what_it_could_detect():
    a, b = np.array([1.0, 2.0, 3.0, 4.5, 3.1]), np.array([0.0, 1.0, 1.0, 2.0, 2.8])
    c = stats.paired_test(a, b)
    reference = sps.ttest_rel(a, b)
    assert c.p == pytest.approx(reference.pvalue) and c.p_adjusted == c.p and c.sizes == (5,)
    ci = reference.confidence_interval(0.95)
    assert (c.difference.low, c.difference.high) == pytest.approx((ci.low, ci.high))
    assert c.difference.mean == pytest.approx(1.36) and c.difference.unit == "seeds"
    # 80% power at n = 5, two-sided 5%: a standardised effect of 1.682 (statsmodels' noncentral t)
    assert c.mde == pytest.approx(1.682 * np.std(a - b, ddof=1), rel=1e-3)
    assert math.isnan(stats.paired_test([1.0], [0.0]).p)


def test_the_detectable_difference_is_found_four_times_in_five():
    rng = np.random.default_rng(10)
    mde = stats.detectable_difference(1.0, 6)
    found = np.mean([stats.paired_test(rng.normal(mde, 1, 6), np.zeros(6)).p < 0.05 for _ in range(400)])
    assert 0.72 < found < 0.88
    mde2 = stats.detectable_difference(1.0, 6, 6)
    found2 = np.mean([sps.ttest_ind(rng.normal(mde2, 1, 6), rng.normal(0, 1, 6)).pvalue < 0.05 for _ in range(400)])
    assert 0.72 < found2 < 0.88 and mde2 > mde
    assert math.isnan(stats.detectable_difference(1.0, 1))


def shared_seeds(rng: np.random.Generator, effect: float, n: int = 6) -> tuple[pd.Series, pd.Series]:
    """Two conditions on the same seeds, each seed moving both alike by much more than the effect."""
    seed = rng.normal(0, 1, n)
    return (pd.Series(seed + effect + rng.normal(0, 0.05, n), index=range(n)),
            pd.Series(seed + rng.normal(0, 0.05, n), index=range(n)))


def test_paired_test_finds_a_planted_effect_and_stays_at_its_level_without_one():
    rng = np.random.default_rng(11)
    found = [stats.paired_test(*shared_seeds(rng, 0.15)).detected for _ in range(200)]
    unpaired = [stats.welch_test(*shared_seeds(rng, 0.15)).detected for _ in range(200)]
    false = [stats.paired_test(*shared_seeds(rng, 0.0)).detected for _ in range(200)]
    assert np.mean(found) > 0.9 and np.mean(unpaired) < 0.2 and np.mean(false) <= 0.10


def test_welch_test_is_scipy_s():
    rng = np.random.default_rng(7)
    a, b = rng.normal(1.0, 0.1, 20), rng.normal(0.9, 0.4, 5)
    c = stats.welch_test(a, b)
    va, vb = a.var(ddof=1) / 20, b.var(ddof=1) / 5
    t, df = (a.mean() - b.mean()) / math.sqrt(va + vb), (va + vb) ** 2 / (va ** 2 / 19 + vb ** 2 / 4)
    half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert c.p == pytest.approx(2 * sps.t.sf(abs(t), df)) and c.sizes == (20, 5) and c.difference.n == 5
    d = a.mean() - b.mean()
    assert (c.difference.low, c.difference.high) == pytest.approx((d - half, d + half))
    false = [stats.welch_test(rng.normal(0, 1, 5), rng.normal(0, 3, 8)).detected for _ in range(200)]
    assert np.mean(false) <= 0.10


def configurations(rng: np.random.Generator, mean: float, k: int = 7, seeds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """k configurations x seeds: each configuration shifts its seeds alike, by more than the seeds vary."""
    config = np.repeat(np.arange(k), seeds)
    return mean + rng.normal(0, 1, k)[config] + rng.normal(0, 0.2, k * seeds), config


def test_nested_interval_has_the_configuration_as_its_unit():
    rng = np.random.default_rng(12)
    covered, naive = 0, 0
    for _ in range(200):
        values, config = configurations(rng, 0.0)
        covered += not stats.nested_test(values, config).detected
        naive += not stats.mean_interval(values).excludes(0.0)
    # 35 rows as independent units: an interval too narrow, covering the true mean far less than 95%
    assert covered / 200 >= 0.90 and naive / 200 < 0.75
    values, config = configurations(rng, 3.0)
    c = stats.nested_test(values, config)
    means = pd.Series(values).groupby(config).mean()
    assert c.detected and c.sizes == (7,) and c.difference.unit == "configurations x 5 seeds"
    assert c.p == pytest.approx(sps.ttest_1samp(means, 0).pvalue)
    assert c.difference == stats.mean_interval(means, unit="configurations x 5 seeds")
    assert "n=7 configurations x 5 seeds" in str(c.difference)


def test_the_mixed_model_agrees_with_configuration_means_when_balanced():
    rng = np.random.default_rng(13)
    values, config = configurations(rng, 1.0)
    means, mixed = stats.nested_test(values, config), stats.nested_test(values, config, method="mixed")
    assert mixed.difference.mean == pytest.approx(means.difference.mean)
    assert mixed.difference.stderr == pytest.approx(means.difference.stderr, rel=1e-3)
    assert mixed.p == pytest.approx(means.p, rel=1e-3) and mixed.test.startswith("mixed model")
    keep = np.ones(len(values), dtype=bool)
    keep[:4] = False  # the first configuration keeps one seed of five: its mean weighs less in the mixed model
    unequal = stats.nested_test(values[keep], config[keep], method="mixed")
    assert unequal.difference.unit == "configurations x 1–5 seeds" and unequal.difference.n == 7
    with pytest.raises(ValueError):
        stats.nested_test(values, config, method="pooled")


def test_wilson_interval_by_hand():
    # Wilson: (p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)
    k, n, z = 3, 10, sps.norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    i = stats.proportion_interval(k, n, unit="nets")
    assert (i.mean, i.n) == (0.3, 10) and (i.low, i.high) == pytest.approx((centre - half, centre + half))
    none = stats.proportion_interval(0, 20)
    assert none.low == pytest.approx(0, abs=1e-12) and 0.1 < none.high < 0.2  # never below 0, never empty
    with pytest.raises(ValueError):
        stats.proportion_interval(0, 0)


def test_words_follow_the_numbers():
    d = stats.Interval(-0.012, -0.020, -0.004, 5, 0.003, unit="seeds")
    better = stats.Comparison(d, 0.004, 0.01, 0.008, "paired t-test", (5,), family=12)
    assert stats.in_words(better, "decreasing", "uniform", lower_is_better=True, metric="test loss") == (
        "decreasing better than uniform in test loss by 0.0120 (95% CI 0.0040 to 0.0200, p = 0.004, Holm-adjusted "
        "p = 0.01 over 12 tests, n = 5 seeds)")
    assert stats.in_words(better, "decreasing", "uniform").startswith("uniform better than decreasing by 0.0120")
    unclear = stats.Comparison(stats.Interval(0.0015, -0.003, 0.006, 5, 0.002, unit="seeds"), 0.4, 0.4, 0.0081,
                               "paired t-test", (5,))
    text = stats.in_words(unclear, "A", "B")
    assert text == ("no difference between A and B detected at n = 5 seeds (A − B: 95% CI -0.0030 to 0.0060, "
                    "p = 0.4; the run could detect differences of about 0.0081 with 80% power)")
    two = stats.welch_test([1.0, 1.1, 0.9, 1.0], [0.0, 0.1, -0.1])
    assert "n = 4 and 3 seeds" in stats.in_words(two, "A", "B") and "p < 0.001" in stats.in_words(two, "A", "B")
    one = stats.paired_test([1.0], [0.5])
    assert stats.in_words(one, "A", "B") == "A against B: no test at n = 1 seeds (A − B = 0.5)"
    for c in (better, unclear, two, one):
        assert "tied" not in stats.in_words(c, "A", "B") and "matter" not in stats.in_words(c, "A", "B")


def test_a_comparison_survives_its_table_row():
    rng = np.random.default_rng(14)
    for c in (stats.paired_test(*shared_seeds(rng, 0.1)), stats.welch_test(rng.normal(0, 1, 5), rng.normal(1, 1, 4)),
              stats.holm_family(null_tests(rng, 3))[1]):
        back = stats.Comparison.from_row(pd.Series(c.row()))
        pd.testing.assert_series_equal(pd.Series(back.row()), pd.Series(c.row()))
        assert stats.in_words(back, "A", "B") == stats.in_words(c, "A", "B") and back.detected == c.detected


def test_interval_round_trips_through_table_columns():
    i = stats.mean_interval([0.1, 0.2, 0.4], unit="draws")
    row = pd.Series({"x": 1, **i.columns("acc")})
    assert stats.Interval.from_columns(row, "acc", 3, "draws") == stats.Interval(i.mean, i.low, i.high, 3, math.nan,
                                                                                 unit="draws")
    assert stats.Interval.from_columns(row, "acc", 3, scale=100).high == pytest.approx(100 * i.high)
    assert stats.interval_columns("acc", [0.1, 0.2, 0.4]) == i.columns("acc")
    assert str(i).endswith("n=3 draws)") and str(stats.mean_interval([0.1, 0.2])).endswith("n=2)")


def test_pareto_front_of_a_hand_made_frame():
    frame = pd.DataFrame({"name": list("dbacefgh"), "params": [300, 200, 100, 150, 200, 400, np.nan, 300],
                          "acc": [0.97, 0.95, 0.90, 0.89, 0.93, 0.96, 0.99, 0.97]})
    front = stats.pareto_front(frame, "params", "acc")
    # c is beaten by a (cheaper, better), e by b (same cost, better), f by d; g has no cost; h ties d
    assert list(front["name"]) == ["a", "b", "d", "h"] and list(front.index) == [2, 1, 0, 7]


def test_plateau_start_of_an_exponential_decay():
    x = np.arange(0, 201)
    y = 5 * (1 + np.exp(-x / 10))
    # the next 10 epochs gain e^(-x/10)(1 - e^-1) / (1 + e^(-x/10)) < 1%  <=>  x > 10 ln((1 - e^-1 - 0.01) / 0.01)
    assert 10 * math.log((1 - math.exp(-1) - 0.01) / 0.01) == pytest.approx(41.3, abs=0.01)
    assert stats.plateau_start(x, y, 0.01, 10) == 42
    assert stats.plateau_start(x[::-1], y[::-1], 0.01, 10) == 42  # any order
    assert stats.plateau_start(x[::10], y[::10], 0.01, 10) == 50  # evaluated every 10 epochs: the first after 41.3


def test_plateau_start_says_not_reached_for_a_curve_that_keeps_falling():
    epochs = np.arange(0, 301, 10)
    slow = 0.5 * np.exp(-epochs / 2000)  # 5% per 100 epochs, to the end
    assert stats.plateau_start(epochs, slow, 0.01, 100) is None
    assert stats.plateau_start(epochs, slow, 0.06, 100) == 0
    assert stats.plateau_start(epochs[:5], slow[:5], 0.01, 100) is None  # shorter than one window


def test_plateau_start_waits_out_a_pause_and_allows_a_rise():
    x = np.arange(0, 400, 10)
    paused = np.where(x < 100, 1.0, np.where(x < 200, 1.0 - 0.004 * (x - 100), 0.6))  # flat, falls, flat
    assert stats.plateau_start(x, paused, 0.01, 50) == 200
    rising = np.where(x < 100, 1 - 0.005 * x, 0.5 + 0.001 * (x - 100))  # overfitting: the loss rises again
    assert stats.plateau_start(x, rising, 0.01, 50) == 100
    with pytest.raises(ValueError):
        stats.plateau_start(x, rising, 0.0, 50)
