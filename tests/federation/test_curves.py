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
    POSITIVE_CLASS,
    TOP_LABEL,
    CurveView,
    curve_problem,
    curve_view,
    read_curves,
    release_curves,
)
from models.spec import load_task

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
    assert len(CURVE_KINDS) == 2 + 2 * len(EDGES) + len(EDGES) + 1 + 2  # and the view: view, view-class


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
    ({"view": 3.0}, "not a declared view"),
    ({"view": 0.5}, "not a declared view"),
    ({"view-class": 1.0}, "only with it"),  # a class index without the at-or-above view
    ({"view": 2.0}, "only with it"),  # at-or-above without its class
    ({"view": 2.0, "view-class": 1.5}, "not a class index"),
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


def test_each_built_in_task_declares_its_view():
    views = {task: curve_view(load_task(task)) for task in
             ("referral_risk", "referral_risk_text", "diagnosis", "diagnosis_text", "triage", "triage_text")}
    assert views["referral_risk"] == views["referral_risk_text"] == POSITIVE_CLASS
    assert views["diagnosis"] == views["diagnosis_text"] == TOP_LABEL
    # Triage: "level 2 or more urgent", where the built-in tier policy sends a patient to the county tier.
    assert views["triage"] == views["triage_text"] == CurveView("at-or-above", 1)
    assert load_task("triage").label.classes[1] == "2"


def test_the_triage_cut_is_the_built_in_policys_whatever_is_in_the_working_folder(tmp_path, monkeypatch):
    # A file named "default" where the node runs must not become the tier policy the cut is read from.
    (tmp_path / "default").write_text("county:\n  triage_at_most: 4\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert curve_view(load_task("triage")) == CurveView("at-or-above", 1)


def _classes(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a k-class model: probabilities that favour the true class, and the class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return proba, y


@pytest.mark.parametrize("view", [TOP_LABEL, CurveView("at-or-above", 1)])
def test_a_view_releases_one_pair_per_row_and_the_same_protocol(view):
    proba, y = _classes(1200, 5, 9)
    score, event = view.pairs(proba, y)
    # The reference, row by row: the top class right or not; or the level among the first two classes.
    for i in range(len(y)):
        if view.kind == "top-label":
            assert score[i] == max(proba[i]) and event[i] == (list(proba[i]).index(max(proba[i])) == y[i])
        else:
            assert np.isclose(score[i], proba[i][0] + proba[i][1]) and event[i] == (y[i] in (0, 1))
    released = release_curves(score, event, min_n=MIN_N, rounding=K, view=view)
    assert released["view"] == {"top-label": 1.0, "at-or-above": 2.0}[view.kind]
    assert released.get("view-class") == view.cut
    assert curve_problem(released, min_n=MIN_N, rounding=K) is None
    curves = read_curves(released, min_n=MIN_N, rounding=K)
    assert curves.view == view and abs(curves.positives - event.sum()) <= K / 2
    assert released == release_curves(score, event, min_n=MIN_N, rounding=K) | view.values()  # the same cells
    for b in curves.calibration:  # suppression unchanged: each bin holds min n rows with and without the event
        inside = (score >= b.low) & (score < b.high) if b.high < 1 else score >= b.low
        assert min(event[inside].sum(), (1 - event[inside]).sum()) >= MIN_N
        assert abs(b.observed - event[inside].mean()) <= 3 * K / b.rows


def test_a_release_from_before_views_is_of_the_positive_class():
    assert read_curves(GOOD, min_n=MIN_N, rounding=K).view == POSITIVE_CLASS
    assert read_curves(GOOD | {"view": 1.0}, min_n=MIN_N, rounding=K).view == TOP_LABEL
