"""Closed-form parameter counts of MLPs, and layer-size vectors held to a parameter budget P.

An MLP with d_in inputs, k hidden layers of m units and n_out classes has
    Parameters(k, m) = (k-1) m^2 + (d_in + k + n_out) m + n_out,
for MNIST (784 -> 10): (k-1) m^2 + (794 + k) m + 10. The m = 1 net costs 2k + 803, so
k_max(P) = floor((P - 803) / 2) and the smallest budget is Parameters(1, 1) = 805.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

D_IN, N_OUT = 784, 10
MIN_P = 805
TOLERANCE = 0.01  # stage 2 architectures must land within 1% of P


def parameters(k: int, m: int, d_in: int = D_IN, n_out: int = N_OUT) -> int:
    return (k - 1) * m * m + (d_in + k + n_out) * m + n_out


def count(widths: Sequence[int], d_in: int = D_IN, n_out: int = N_OUT) -> int:
    """Weights and biases of an MLP with these hidden widths; equals sum(p.numel()) of the built model."""
    sizes = [d_in, *widths, n_out]
    return sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))


def k_max(P: int) -> int:
    return (P - 803) // 2


def width_for(k: int, P: int) -> int:
    """m_P(k): the integer width m >= 1 whose Parameters(k, m) is closest to P."""
    if not 1 <= k <= k_max(P):
        raise ValueError(f"k={k} is outside 1..k_max(P)={k_max(P)} for P={P}")
    a, b, c = k - 1, D_IN + k + N_OUT, N_OUT - P
    root = -c / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    candidates = {max(1, math.floor(root)), max(1, math.ceil(root))}
    return min(sorted(candidates), key=lambda m: abs(parameters(k, m) - P))


def depth_grid(P: int, largest: int = 32) -> list[int]:
    """Log-spaced depths 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ... capped at k_max(P)."""
    ks, base = [], 1
    while base <= largest:
        ks += [base, base * 3 // 2] if base >= 2 else [base]
        base *= 2
    return sorted({k for k in ks if k <= min(largest, k_max(P))})


def profile(shape: str, k: int, ratio: float = 0.5, free: Sequence[float] = ()) -> list[float]:
    """Relative widths of a shape family, largest = 1. `ratio` is the layer-to-layer factor."""
    if shape == "uniform":
        return [1.0] * k
    if shape == "decreasing":
        return [ratio ** i for i in range(k)]
    if shape == "increasing":
        return [ratio ** (k - 1 - i) for i in range(k)]
    if shape == "free":
        top = max(free)
        return [r / top for r in free]
    raise ValueError(f"unknown shape family {shape!r}")


def fit_widths(relative: Sequence[float], P: int) -> list[int]:
    """Integer widths in the given proportions whose count is within 1% of P, the last width closing the gap.

    Bisection finds the scales just below and just above P; at each, the last layer's count is linear in its width,
    so that width closes the remaining gap (to rounding), as far as the proportions' order allows: it stays no wider
    than any layer the profile makes wider, and no narrower than any it makes narrower. Of the two, the one whose
    last width moved least from its proportion; ValueError where neither lands within 1%.
    """
    def widths_at(scale: float) -> list[int]:
        return [max(1, round(scale * r)) for r in relative]

    lo, hi = 0.0, float(P)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(widths_at(mid)) <= P else (lo, mid)
    fits = []
    for scale in (lo, hi):
        widths = widths_at(scale)
        base = count(widths[:-1] + [0])
        slope = count(widths[:-1] + [1]) - base
        above = [w for w, r in zip(widths, relative) if r > relative[-1]]
        below = [w for w, r in zip(widths, relative) if r < relative[-1]]
        widths[-1] = min(max(1, *below, round((P - base) / slope)), *above, P)
        if abs(count(widths) - P) <= TOLERANCE * P:
            fits.append((abs(widths[-1] - scale * relative[-1]), widths))
    if not fits:
        raise ValueError(f"no widths in proportions {list(relative)} land within 1% of P={P}")
    return min(fits)[1]


def fit_profile(relative: Sequence[float], P: int) -> list[int]:
    """fit_widths of a shape family's profile; where no widths in its proportions land within 1% of P (the steps
    of small P are coarse), the profile eased halfway toward uniform, up to ten times, keeping its order (so the
    widths stay of its family); ValueError where even then none do."""
    for _ in range(10):
        try:
            return fit_widths(relative, P)
        except ValueError:
            relative = [(r + 1) / 2 for r in relative]
    return fit_widths(relative, P)


@functools.cache  # every search depth is asked about per P
def holds(k: int, P: int) -> bool:
    """Whether an MLP of k hidden layers of (nearly) one width lands within 1% of P (one hidden layer moves in steps
    of 795 parameters, so k = 1 misses many P)."""
    if not 1 <= k <= k_max(P):
        return False
    try:
        fit_widths([1.0] * k, P)
    except ValueError:
        return False
    return True


def format_widths(widths: Sequence[int]) -> str:
    """Widths as one string ("256-128"): Tune configs, CSV cells and TensorBoard HParams all take it."""
    return "-".join(str(w) for w in widths)


def parse_widths(text: str) -> list[int]:
    return [int(w) for w in str(text).split("-") if w]
