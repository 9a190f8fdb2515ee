import random

import pytest

from tune_mnist import budget, models


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("m", [1, 2, 7, 50])
def test_closed_form_equals_built_model(k, m):
    net = models.mlp([m] * k)
    assert budget.parameters(k, m) == models.n_params(net) == budget.count([m] * k)
    assert budget.parameters(k, m) == (k - 1) * m * m + (794 + k) * m + 10


def test_count_of_any_vector_equals_built_model():
    rng = random.Random(0)
    for _ in range(20):
        widths = [rng.randint(1, 300) for _ in range(rng.randint(1, 6))]
        assert budget.count(widths) == models.n_params(models.mlp(widths, "relu"))


def test_k_max_and_smallest_budget():
    assert budget.parameters(1, 1) == budget.MIN_P == 805
    for P in (805, 806, 1000, 25_000, 100_000):
        k = budget.k_max(P)
        assert budget.parameters(k, 1) <= P < budget.parameters(k + 1, 1)
    assert budget.k_max(100_000) == 49_598


@pytest.mark.parametrize("P", [805, 1000, 7_850, 25_000, 100_000, 1_000_000])
def test_width_for_is_the_closest(P):
    for k in [1, 2, 3, 4, 8, 16, 32]:
        if k > budget.k_max(P):
            continue
        m = budget.width_for(k, P)
        best = min(range(1, 2000), key=lambda w: abs(budget.parameters(k, w) - P))
        assert abs(budget.parameters(k, m) - P) == abs(budget.parameters(k, best) - P)


def test_width_for_rejects_impossible_depth():
    with pytest.raises(ValueError):
        budget.width_for(budget.k_max(10_000) + 1, 10_000)


@pytest.mark.parametrize("shape", ["uniform", "decreasing", "increasing", "free"])
@pytest.mark.parametrize("P", [5_000, 25_000, 100_000, 400_000])
def test_fit_widths_within_one_percent(shape, P):
    rng = random.Random(P)
    for k in budget.feasible_depths(P, 6):
        free = [rng.uniform(0.05, 1) for _ in range(k)]
        widths = budget.fit_widths(budget.profile(shape, k, 0.6, free), P)
        assert len(widths) == k and min(widths) >= 1
        assert abs(budget.count(widths) - P) <= 0.01 * P
        if shape == "decreasing" and k > 2:
            assert widths[0] > widths[-2]


def test_feasible_depths_skip_the_single_layer_gap():
    # one hidden layer moves in steps of 795 parameters: 4,780 and 5,575 both miss 5,000 by more than 1%
    assert budget.feasible_depths(5_000, 6) == [2, 3, 4, 5, 6]
    assert budget.feasible_depths(100_000, 6) == [1, 2, 3, 4, 5, 6]
    assert budget.feasible_depths(805, 6) == [1]
    with pytest.raises(ValueError):
        budget.fit_widths([1.0], 5_000)


def test_depth_grid_is_log_spaced_and_capped():
    assert budget.depth_grid(100_000) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
    assert budget.depth_grid(805) == [1]
    assert budget.depth_grid(100_000, 8) == [1, 2, 3, 4, 6, 8]


def test_widths_round_trip_as_text():
    assert budget.parse_widths(budget.format_widths([256, 128, 7])) == [256, 128, 7]
    assert budget.parse_widths("") == []
