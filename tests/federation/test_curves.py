"""The curves a site releases (federation.curves): read back, they match the curves computed directly
on the site's rows within what rounding allows; every cell between two released counts holds at least
min n patients of each class; and the rules refuse numbers that break them."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from federation.curves import (
    CURVE_KINDS,
    EDGES,
    curve_problem,
    read_curves,
    release_curves,
)

K, MIN_N = 5, 10


def _rows(n: int, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A site's held-out rows: a label and a predicted risk that tracks it (some on the edges exactly)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(int)
    p = np.clip(rng.beta(1.5 + 3 * y, 4.5 - 2 * y), 0.0, 1.0)
    p[:8] = [0.0, 0.05, 0.1, 0.3, 0.5, 0.95, 1.0, 0.35]  # rows on an edge, and at 0 and 1
    return p, y


def _tpr_fpr(p: np.ndarray, y: np.ndarray, threshold: float) -> tuple[float, float]:
    """The reference: rates at a threshold, straight from the rows (no sklearn)."""
    hit = p >= threshold
    return float(hit[y == 1].mean()), float(hit[y == 0].mean())


@pytest.mark.parametrize(("n", "rate", "seed"), [(1100, 0.2, 0), (400, 0.35, 1), (160, 0.5, 2)])
def test_the_curves_read_from_the_released_counts_match_the_rows_within_rounding(n, rate, seed):
    p, y = _rows(n, rate, seed)
    released = release_curves(p, y, min_n=MIN_N, rounding=K)
    assert curve_problem(released, min_n=MIN_N, rounding=K) is None
    curves = read_curves(released, min_n=MIN_N, rounding=K)
    assert curves is not None and len(curves.roc) >= 3
    assert abs(curves.positives - y.sum()) <= K / 2 and abs(curves.negatives - (1 - y).sum()) <= K / 2
    assert (curves.roc[0].fpr, curves.roc[0].tpr, curves.roc[-1].fpr, curves.roc[-1].tpr) == (1, 1, 0, 0)
    for point in curves.roc[1:-1]:
        assert point.threshold in EDGES
        tpr, fpr = _tpr_fpr(p, y, point.threshold)
        assert abs(point.tpr - tpr) <= K / curves.positives  # the bound the module docstring states
        assert abs(point.fpr - fpr) <= K / curves.negatives
    assert curves.calibration[0].low == 0.0 and curves.calibration[-1].high == 1.0
    for low, high in pairwise(curves.calibration):
        assert low.high == high.low  # the bins tile [0, 1]
    for b in curves.calibration:
        inside = (p >= b.low) & ((p < b.high) if b.high < 1 else (p <= 1))
        exact_rows, exact_rate, exact_mean = inside.sum(), y[inside].mean(), p[inside].mean()
        assert abs(b.rows - exact_rows) <= 2 * K
        assert abs(b.observed - exact_rate) <= 3 * K / b.rows
        assert b.low <= b.mean_predicted <= b.high
        assert abs(b.mean_predicted - exact_mean) <= K * (b.high - b.low) / (2 * b.rows) + 1e-12


def test_every_cell_between_released_counts_holds_min_n_of_each_class():
    p, y = _rows(300, 0.2, 3)
    released = release_curves(p, y, min_n=MIN_N, rounding=K)
    kept = sorted(float(k.removeprefix("tp-")) / 100 for k in released if k.startswith("tp-"))
    cuts = [0.0, *kept, 1.01]
    for low, high in pairwise(cuts):  # exactly, on the rows themselves
        inside = (p >= low) & (p < high)
        assert (y[inside] == 1).sum() >= MIN_N and (y[inside] == 0).sum() >= MIN_N, (low, high)
    # fewer cuts than the protocol offers: the small bins were merged, none released alone
    assert 0 < len(kept) < len(EDGES)
    assert {k for k in released if k.startswith("mean-")} == {f"mean-{round(c * 100):02d}" for c in cuts[:-1]}


def test_a_small_bin_is_merged_into_its_neighbour_not_released():
    p, y = _rows(600, 0.4, 4)
    p[p >= 0.9] = 0.85  # empty the top bins, then put 3 positives (fewer than min n) at the very top
    p[np.flatnonzero(y == 1)[:3]] = 0.97
    released = release_curves(p, y, min_n=MIN_N, rounding=K)
    assert "tp-95" not in released and "tp-90" not in released and "mean-95" not in released
    top = max(float(k.removeprefix("tp-")) for k in released if k.startswith("tp-")) / 100
    assert ((p >= top) & (y == 1)).sum() >= MIN_N and ((p >= top) & (y == 0)).sum() >= MIN_N


@pytest.mark.parametrize("positives", [0, 3, 9])
def test_fewer_than_min_n_of_a_class_releases_nothing(positives):
    p, y = _rows(500, 0.3, 5)
    y[:] = 0
    y[:positives] = 1
    assert release_curves(p, y, min_n=MIN_N, rounding=K) == {}


def test_the_keys_are_the_declared_ones():
    p, y = _rows(1100, 0.3, 6)
    assert set(release_curves(p, y, min_n=MIN_N, rounding=K)) <= set(CURVE_KINDS)
    assert len(CURVE_KINDS) == 2 + 2 * len(EDGES) + len(EDGES) + 1


GOOD = {"positives": 60.0, "negatives": 240.0, "tp-50": 30.0, "fp-50": 15.0, "tp-20": 50.0, "fp-20": 120.0,
        "mean-00": 0.1, "mean-20": 0.296, "mean-50": 0.5 + 5 * 2.5 / 45}  # each on its bin's grid: k * width / rows


@pytest.mark.parametrize(("change", "problem"), [
    ({"tp-55": 35.0}, "both its tp and its fp"),
    ({"tp-50": 7.0}, "below the site's minimum n"),  # an unsuppressed count
    ({"tp-50": 31.0}, "not rounded"),
    ({"tp-50": 45.0}, "a cell between released counts"),  # 45 above 0.5, 50 above 0.2: a cell of 5 positives
    ({"fp-20": 235.0}, "a cell between released counts"),  # 5 negatives below 0.2
    ({"mean-30": 0.32}, "no released bin starts there"),
    ({"mean-50": 0.4}, "not on its bin's grid"),
    ({"mean-50": 0.7501}, "not on its bin's grid"),
    ({"auroc-50": 0.8}, "undeclared"),
    ({"mean-00": float("nan")}, "not finite"),
])
def test_the_rules_refuse_a_number_that_breaks_them(change, problem):
    assert curve_problem(GOOD, min_n=MIN_N, rounding=K) is None
    assert problem in curve_problem(GOOD | change, min_n=MIN_N, rounding=K)
    assert read_curves(GOOD | change, min_n=MIN_N, rounding=K) is None


def test_what_the_console_reads_from_good_numbers():
    curves = read_curves(GOOD, min_n=MIN_N, rounding=K)
    assert [(p.threshold, p.fpr, p.tpr) for p in curves.roc] == [
        (0.0, 1.0, 1.0), (0.2, 0.5, 50 / 60), (0.5, 15 / 240, 0.5), (1.0, 0.0, 0.0)]
    assert [(b.low, b.high, b.rows, b.positives) for b in curves.calibration] == [
        (0.0, 0.2, 130, 10), (0.2, 0.5, 125, 20), (0.5, 1.0, 45, 30)]
