"""ROC and reliability curves of a binary view of a model at one site, released as suppressed, rounded counts.

**The view.** The curves are of one score and one yes/no event per patient, which the task's spec
declares, not the coordinator (``curve_view``): for a binary task the probability of the positive class
(``positive-class``); for a multiclass task the top label (``top-label``: score = the highest class
probability, event = "the top class is the true one", so the reliability diagram is the usual
confidence calibration and the ROC says how well confidence separates right from wrong suggestions);
for the triage level (ordinal) the event "level ``c`` or more urgent" (``at-or-above``), ``c`` being the
level at which the built-in tier policy (``models/policies/default.yaml``) sends a patient to at least
the county tier on triage alone, score = P(level <= ``c``); another ordinal label gets the top-label
view. One pair per patient, so the cell rule below keeps its meaning: a cell is ``min_n`` patients.

The protocol fixes where the curves may be cut, not the coordinator: ``EDGES`` = 0.05, 0.10, ..., 0.95
on the view's score (from the calibrated global model's probabilities). A site keeps some
of them: they are both the thresholds of its ROC curve and the edges of its reliability diagram's bins,
so the two curves are sums of the same cells and neither can be subtracted from the other to reach a
cell that was withheld.

What a site sends (record ``curves``; each number's kind in ``CURVE_KINDS``):

- ``view``: the view's code in ``VIEW_CODES`` (``view``), and for ``at-or-above`` ``view-class``: the
  index of level ``c`` among the task's classes (``view-class``); both fixed by the task's spec, not by
  the site's rows (a release without ``view``, from before views, is of the positive class);
- ``positives``, ``negatives``: its held-out rows with and without the event (``count``);
- ``tp-30``, ``fp-30`` (threshold 0.30): positives and negatives predicted at or above it
  (``cumulative``), for each threshold it keeps;
- ``mean-30``: the mean predicted probability of the bin from 0.30 up to the next kept threshold
  (``bin-mean``), for 0 and each kept threshold. A bin's rows and observed positives are differences of
  the cumulative counts; they are not sent again.

**Suppression.** Walking the thresholds from the top, a threshold is kept only if the cell it closes
(the rows between it and the last kept threshold above) holds at least ``min_n`` positives and ``min_n``
negatives, and so do the rows below it; both exactly and after rounding. The kept thresholds cut each
class into cells of at least ``min_n`` patients: every released count, and every difference of two of
them, is about ``min_n`` patients or more. A fixed bin too small for that is never released alone: it
is merged with its neighbours into one bin (fewer points on the curves), and a site with fewer than
``min_n`` patients of either class, or no threshold to keep, releases nothing.

**Rounding.** Counts are rounded to ``rounding`` (the egress guard's k, 5), so a rate read from them is
within k / P of the exact one (P: released positives; negatives for the false-positive rate); a bin's
observed rate, from four rounded counts, within 3k / n_bin. A bin's mean is put on a grid of step
k * width / n_bin (one patient moves it by at most width / n_bin, so a grid step is worth k patients,
as for the metrics in ``node_agent.egress``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from models.policy import load_policy
from models.spec import TaskSpec

__all__ = ["CURVES_RECORD", "CURVE_KINDS", "EDGES", "POSITIVE_CLASS", "TOP_LABEL", "VIEW_CODES", "Bin", "CurveView",
           "RocPoint", "SiteCurves", "curve_problem", "curve_view", "read_curves", "release_curves"]

CURVES_RECORD = "curves"
STEPS = 20
EDGES = tuple(i / STEPS for i in range(1, STEPS))  # 0.05 .. 0.95
_TOP = STEPS  # the index "above 1": no row is predicted there
_TAG = [f"{round(100 * i / STEPS):02d}" for i in range(STEPS)]  # "00", "05", ..., "95"
CURVE_KINDS: dict[str, str] = {
    "positives": "count", "negatives": "count",
    **{f"{rate}-{tag}": "cumulative" for tag in _TAG[1:] for rate in ("tp", "fp")},
    **{f"mean-{tag}": "bin-mean" for tag in _TAG},
    "view": "view", "view-class": "view-class",
}
_COUNTED = ("count", "cumulative")  # the kinds the count rule (min n, rounding) applies to
VIEW_CODES: dict[str, int] = {"positive-class": 0, "top-label": 1, "at-or-above": 2}
_MAX_CLASSES = 64  # a view-class beyond this is not a class index of any task


@dataclass(frozen=True)
class CurveView:
    """The binary view the curves are of: ``kind`` (a key of ``VIEW_CODES``) and, for ``at-or-above``,
    ``cut``: the index of the last class (in the spec's order, the most urgent first) counted as the event."""

    kind: str
    cut: int | None = None

    def pairs(self, proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One (score, event) pair per row from class probabilities ``proba`` (n, classes) and class
        indices ``y``."""
        proba, y = np.asarray(proba, dtype=float), np.asarray(y).astype(int)
        if self.kind == "positive-class":
            return proba[:, 1], (y == 1).astype(int)
        if self.kind == "top-label":
            return proba.max(axis=1), (proba.argmax(axis=1) == y).astype(int)
        cut = int(self.cut)  # type: ignore[arg-type]  # at-or-above always has one
        return np.clip(proba[:, : cut + 1].sum(axis=1), 0.0, 1.0), (y <= cut).astype(int)

    def values(self) -> dict[str, float]:
        """The view as released (``view``, and ``view-class`` for ``at-or-above``)."""
        out = {"view": float(VIEW_CODES[self.kind])}
        return out | ({"view-class": float(self.cut)} if self.cut is not None else {})


POSITIVE_CLASS, TOP_LABEL = CurveView("positive-class"), CurveView("top-label")


def curve_view(spec: TaskSpec) -> CurveView:
    """The view a task's curves are of (module docstring). The triage cut is the built-in policy's
    county triage level, a property of the protocol's version: a commission's own policy does not move
    it, so a site's curves of two versions are always of the same event."""
    label = spec.label
    if label.kind == "binary":
        return POSITIVE_CLASS
    if label.kind == "ordinal" and label.name == "triage_level":
        level = str(load_policy().county.triage_at_most)
        if level in label.classes[:-1]:  # the last class as the cut would make every patient an event
            return CurveView("at-or-above", label.classes.index(level))
    return TOP_LABEL


def _view_of(values: dict[str, float]) -> CurveView | str:
    """The view released ``values`` declare, or why it is not one."""
    code, cut = values.get("view", 0.0), values.get("view-class")
    kinds = {float(c): k for k, c in VIEW_CODES.items()}
    if code not in kinds:
        return f"view = {code} is not a declared view {sorted(VIEW_CODES.values())}"
    if (kinds[code] == "at-or-above") != (cut is not None):
        return "view-class goes with the at-or-above view, and only with it"
    if cut is not None and (cut != int(cut) or not 0 <= cut < _MAX_CLASSES):
        return f"view-class = {cut} is not a class index"
    return CurveView(kinds[code], None if cut is None else int(cut))


def _round(value: float, k: int) -> int:
    return int(math.floor(value / k + 0.5) * k)


def _bins(p: np.ndarray) -> np.ndarray:
    # The bin of p is the number of edges at or below it: comparisons only, so a row on an edge is in
    # the same bin for the counts and for the means.
    return np.searchsorted(np.asarray(EDGES), p, side="right")


def _cumulative(bins: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positives and negatives predicted at or above i / STEPS for i = 0..STEPS (a probability of
    exactly 1 is in the last bin, so none is counted at index STEPS)."""
    def above(counts: np.ndarray) -> np.ndarray:
        return np.append(np.cumsum(counts[::-1])[::-1], 0)

    return (above(np.bincount(bins[y == 1], minlength=STEPS)),
            above(np.bincount(bins[y == 0], minlength=STEPS)))


def _cells_ok(chain: list[float], min_n: float) -> bool:
    """Whether consecutive values of a cumulative chain (0 above the top, ..., the class total) differ
    by at least ``min_n``: each cell between them holds ``min_n`` patients or more."""
    return all(b - a >= min_n for a, b in pairwise(chain))


def _mean_step(rows: float, width: float, k: int) -> float:
    return k * width / rows


def release_curves(proba: np.ndarray, y: np.ndarray, *, min_n: int, rounding: int,
                   view: CurveView = POSITIVE_CLASS) -> dict[str, float]:
    """What a site may release about the curves of scores ``proba`` (the view's: ``CurveView.pairs``)
    against events ``y`` (0/1), as the module docstring says, with the ``view`` declared; ``{}`` when
    nothing may leave."""
    p, y = np.asarray(proba, dtype=float), np.asarray(y).astype(int)
    bins = _bins(p)
    tp, fp = _cumulative(bins, y)
    rtp, rfp = [_round(v, rounding) for v in tp], [_round(v, rounding) for v in fp]
    kept: list[int] = []  # from the top down; each closes a cell of min_n per class, exactly and rounded
    for i in range(STEPS - 1, 0, -1):
        last = kept[-1] if kept else _TOP
        if all(_cells_ok([c[last], c[i], c[0]], min_n) for c in (tp, fp, rtp, rfp)):
            kept.append(i)
    if not kept:
        return {}
    out: dict[str, float] = view.values() | {"positives": float(rtp[0]), "negatives": float(rfp[0])}
    for i in kept:
        out[f"tp-{_TAG[i]}"], out[f"fp-{_TAG[i]}"] = float(rtp[i]), float(rfp[i])
    cuts = [_TOP, *kept, 0]
    for high, low in pairwise(cuts):  # each released bin [low, high): its mean on the bin's grid
        rows = (rtp[low] + rfp[low]) - (rtp[high] + rfp[high])
        start, width = low / STEPS, (high - low) / STEPS
        step = _mean_step(rows, width, rounding)
        mean = float(p[(bins >= low) & (bins < high)].mean())
        out[f"mean-{_TAG[low]}"] = min(start + math.floor((mean - start) / step + 0.5) * step, start + width)
    return out


def _kept(values: dict[str, float]) -> list[int]:
    """The kept thresholds' indices, from the top down."""
    return [i for i in range(STEPS - 1, 0, -1) if f"tp-{_TAG[i]}" in values]


def _chains(values: dict[str, float], kept: list[int]) -> tuple[dict[int, float], dict[int, float]]:
    tp = {_TOP: 0.0, 0: values["positives"]} | {i: values[f"tp-{_TAG[i]}"] for i in kept}
    fp = {_TOP: 0.0, 0: values["negatives"]} | {i: values[f"fp-{_TAG[i]}"] for i in kept}
    return tp, fp


def curve_problem(values: dict[str, float], *, min_n: int, rounding: int) -> str | None:
    """Why released ``values`` may not leave (or be used): an undeclared key or view, a count below
    ``min_n`` or not rounded, a cell of fewer than ``min_n`` patients between two counts, a mean of a bin
    that was not released or off its grid; ``None`` if they may."""
    if not values:
        return None
    undeclared = sorted(set(values) - CURVE_KINDS.keys())
    if undeclared:
        return f"undeclared curve values {undeclared}"
    if not all(math.isfinite(v) for v in values.values()):
        return "a curve value is not finite"
    view = _view_of(values)
    if isinstance(view, str):
        return view
    kept = _kept(values)
    if not {"positives", "negatives"} <= values.keys() or not kept:
        return "a curve needs the positives, the negatives and at least one threshold"
    if any(f"fp-{_TAG[i]}" not in values for i in kept) or len(kept) != sum(k.startswith("fp-") for k in values):
        return "each threshold needs both its tp and its fp"
    for key, value in values.items():
        if CURVE_KINDS[key] in _COUNTED and (value < min_n or value % rounding):
            return f"{key} = {value} is below the site's minimum n ({min_n}) or not rounded to {rounding}"
    tp, fp = _chains(values, kept)
    cuts = [_TOP, *kept, 0]
    for chain in (tp, fp):
        if not _cells_ok([chain[i] for i in cuts], min_n):
            return f"a cell between released counts holds fewer than {min_n} patients of a class"
    lows = {low: high for high, low in pairwise(cuts)}
    for key in [k for k in values if CURVE_KINDS[k] == "bin-mean"]:
        low = _TAG.index(key.removeprefix("mean-"))
        if low not in lows:
            return f"{key}: no released bin starts there"
        high, value = lows[low], values[key]
        start, width = low / STEPS, (high - low) / STEPS
        step = _mean_step((tp[low] + fp[low]) - (tp[high] + fp[high]), width, rounding)
        grid = (value - start) / step
        if not start <= value <= start + width or (abs(grid - round(grid)) > 1e-6 and value != start + width):
            return f"{key} = {value} is not on its bin's grid (step {step:.4g} in [{start}, {start + width}])"
    return None


@dataclass(frozen=True)
class RocPoint:
    threshold: float
    fpr: float
    tpr: float


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    rows: int
    positives: int
    mean_predicted: float
    observed: float


@dataclass(frozen=True)
class SiteCurves:
    view: CurveView
    positives: int  # rows with the view's event
    negatives: int
    roc: list[RocPoint]  # threshold 0 (all predicted positive: 1, 1) up to 1 (none: 0, 0)
    calibration: list[Bin]  # from the lowest bin up


def read_curves(values: dict[str, float], *, min_n: int = 1, rounding: int = 1) -> SiteCurves | None:
    """The curves a site released (``values`` as sent), or ``None`` if they hold nothing or break the
    rules (``curve_problem`` at ``min_n`` and ``rounding``: the reader does not know each site's own)."""
    view = _view_of(values)
    if not values or isinstance(view, str) or curve_problem(values, min_n=min_n, rounding=rounding):
        return None
    kept = _kept(values)
    tp, fp = _chains(values, kept)
    positives, negatives = values["positives"], values["negatives"]
    roc = [RocPoint(threshold=i / STEPS, fpr=fp[i] / negatives, tpr=tp[i] / positives) for i in sorted(tp)]
    bins = []
    for high, low in reversed(list(pairwise([_TOP, *kept, 0]))):
        rows, hits = (tp[low] + fp[low]) - (tp[high] + fp[high]), tp[low] - tp[high]
        mean = values.get(f"mean-{_TAG[low]}")
        if mean is not None:
            bins.append(Bin(low=low / STEPS, high=high / STEPS, rows=int(rows), positives=int(hits),
                            mean_predicted=mean, observed=hits / rows))
    return SiteCurves(view=view, positives=int(positives), negatives=int(negatives), roc=roc, calibration=bins)
