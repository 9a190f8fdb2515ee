import random

import pytest

from tune_mnist import closed_form, models


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("m", [1, 2, 7, 50])
def test_closed_form_equals_built_model(k, m):
    net = models.mlp([m] * k)
    assert closed_form.parameters(k, m) == models.n_params(net) == closed_form.count([m] * k)
    assert closed_form.parameters(k, m) == (k - 1) * m * m + (794 + k) * m + 10


def test_count_of_any_vector_equals_built_model():
    rng = random.Random(0)
    for _ in range(20):
        widths = [rng.randint(1, 300) for _ in range(rng.randint(1, 6))]
        assert closed_form.count(widths) == models.n_params(models.mlp(widths, "relu"))


def test_k_max_and_smallest_budget():
    assert closed_form.parameters(1, 1) == closed_form.MIN_P == 805
    for P in (805, 806, 1000, 25_000, 100_000):
        k = closed_form.k_max(P)
        assert closed_form.parameters(k, 1) <= P < closed_form.parameters(k + 1, 1)
    assert closed_form.k_max(100_000) == 49_598


@pytest.mark.parametrize("P", [805, 1000, 7_850, 25_000, 100_000, 1_000_000])
def test_width_for_is_the_closest(P):
    for k in [1, 2, 3, 4, 8, 16, 32]:
        if k > closed_form.k_max(P):
            continue
        m = closed_form.width_for(k, P)
        best = min(range(1, 2000), key=lambda w: abs(closed_form.parameters(k, w) - P))
        assert abs(closed_form.parameters(k, m) - P) == abs(closed_form.parameters(k, best) - P)


def test_width_for_rejects_impossible_depth():
    with pytest.raises(ValueError):
        closed_form.width_for(closed_form.k_max(10_000) + 1, 10_000)


@pytest.mark.parametrize("shape", ["uniform", "decreasing", "increasing", "free"])
@pytest.mark.parametrize("P", [5_000, 25_000, 100_000, 400_000])
def test_fit_widths_within_one_percent(shape, P):
    rng = random.Random(P)
    for k in closed_form.feasible_depths(P, 6):
        free = [rng.uniform(0.05, 1) for _ in range(k)]
        widths = closed_form.fit_widths(closed_form.profile(shape, k, 0.6, free), P)
        assert len(widths) == k and min(widths) >= 1
        assert abs(closed_form.count(widths) - P) <= 0.01 * P
        if shape == "decreasing" and k > 2:
            assert widths[0] > widths[-2]


def test_feasible_depths_skip_the_single_layer_gap():
    # one hidden layer moves in steps of 795 parameters: 4,780 and 5,575 both miss 5,000 by more than 1%
    assert closed_form.feasible_depths(5_000, 6) == (2, 3, 4, 5, 6)
    assert closed_form.feasible_depths(100_000, 6) == (1, 2, 3, 4, 5, 6)
    assert closed_form.feasible_depths(805, 6) == (1,)
    with pytest.raises(ValueError):
        closed_form.fit_widths([1.0], 5_000)


def test_depth_grid_is_log_spaced_and_capped():
    assert closed_form.depth_grid(100_000) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
    assert closed_form.depth_grid(805) == [1]
    assert closed_form.depth_grid(100_000, 8) == [1, 2, 3, 4, 6, 8]


def test_widths_round_trip_as_text():
    assert closed_form.parse_widths(closed_form.format_widths([256, 128, 7])) == [256, 128, 7]
    assert closed_form.parse_widths("") == []
