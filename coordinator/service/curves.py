"""A version's ROC and calibration curves per site, as the commission's console plots them.

Only what the sites released: the counts their egress guards let out with the final evaluation
(``federation.curves``), which ``coordinator.registry`` keeps with the version's run, and the binary view
of the model they are of (positive class, top-label confidence, or triage level ``c`` or more urgent),
which each site declared with them. Rates are read from those counts here; a site's numbers that break
the protocol's rules are left out, not repaired.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from coordinator.registry import CURVES_ARTIFACT
from coordinator.service.versions import ModelRegistry
from federation.curves import EDGES, CurveView, curve_view, read_curves
from federation.errors import RegistryError
from models.spec import TaskSpec, builtin_tasks, load_task

__all__ = ["CalibrationBin", "CurveViewOut", "RocPoint", "SiteCurves", "VersionCurves", "version_curves"]


class CurveViewOut(BaseModel):
    kind: Literal["positive-class", "top-label", "at-or-above"] = Field(
        description="positive-class: P(positive class) against the label; top-label: the highest class "
                    "probability against 'the top class is the true one'; at-or-above: P(label at or above "
                    "cut_class in the task's order, most urgent first) against that event")
    cut_index: int | None = Field(None, description="at-or-above: the cut's index among the task's classes")
    cut_class: str | None = Field(None, description="at-or-above: the cut's class (e.g. triage level '2': level 2 "
                                                    "or more urgent), when the task is a built-in one")


class RocPoint(BaseModel):
    threshold: float = Field(description="predicted risk at or above which a patient counts as positive")
    fpr: float = Field(description="false-positive rate at the threshold")
    tpr: float = Field(description="true-positive rate (sensitivity) at the threshold")


class CalibrationBin(BaseModel):
    low: float
    high: float
    rows: int = Field(description="held-out rows predicted in [low, high), from rounded counts")
    positives: int
    mean_predicted: float = Field(description="mean predicted risk of the bin's rows (on the bin's grid)")
    observed: float = Field(description="positives / rows: the observed rate")


class SiteCurves(BaseModel):
    view: CurveViewOut = Field(description="the binary view the site declared its curves are of")
    positives: int = Field(description="held-out rows with the view's event (rounded)")
    negatives: int
    roc: list[RocPoint] = Field(description="from threshold 0 (1, 1) to above 1 (0, 0), at the kept thresholds")
    calibration: list[CalibrationBin] = Field(description="the released bins, lowest first")


class VersionCurves(BaseModel):
    task: str
    version: str
    view: CurveViewOut | None = Field(description="the view the sites' curves are of (without any: the one the "
                                                  "protocol declares for a built-in task; else None)")
    thresholds: list[float] = Field(description="where the protocol lets a site cut its curves")
    sites: dict[str, SiteCurves] = Field(description="per site that released curves (sites with enough held-out "
                                                     "patients with and without the view's event)")


def _view_out(view: CurveView, spec: TaskSpec | None) -> CurveViewOut:
    classes = spec.label.classes if spec is not None else []
    name = classes[view.cut] if view.cut is not None and view.cut < len(classes) else None
    return CurveViewOut(kind=view.kind, cut_index=view.cut, cut_class=name)  # type: ignore[arg-type]


def _released(registry: ModelRegistry, run_id: str) -> dict[str, dict[str, float]]:
    """The ``site_curves.json`` the version's run holds (``{}`` without one)."""
    import mlflow

    try:
        if not run_id or not any(a.path == CURVES_ARTIFACT for a in registry.client.list_artifacts(run_id)):
            return {}
        with tempfile.TemporaryDirectory() as folder:
            path = registry.client.download_artifacts(run_id, CURVES_ARTIFACT, folder)
            sites = json.loads(Path(path).read_text(encoding="utf-8")).get("sites", {})
    except (mlflow.exceptions.MlflowException, OSError, ValueError, AttributeError) as exc:
        raise RegistryError(f"cannot read the curves of run {run_id}: {exc}") from exc
    return sites if isinstance(sites, dict) else {}


def version_curves(registry: ModelRegistry, task: str, version: str) -> VersionCurves:
    """Each site's curves for ``task`` ``version``; ``NotFound`` (404) for an unknown version.

    The version's view is the one most of its sites declared (they all declare the task's, as the
    protocol of their run fixed it); a site's curves of another view are left out, not overlaid on a
    different event. Without any, the view the protocol declares for a built-in task now."""
    view = registry.existing(task, version)
    spec = load_task(task) if task in builtin_tasks() else None  # a name, never a path from the URL
    read = {}
    for site, values in sorted(_released(registry, view.run_id).items()):
        try:
            curves = read_curves({str(k): float(v) for k, v in values.items()})
        except (AttributeError, TypeError, ValueError):
            curves = None
        if curves is not None:
            read[str(site)] = curves
    declared = Counter(c.view for c in read.values()).most_common(1)
    shared = declared[0][0] if declared else curve_view(spec) if spec is not None else None
    sites = {site: SiteCurves(
        view=_view_out(curves.view, spec), positives=curves.positives, negatives=curves.negatives,
        roc=[RocPoint(threshold=p.threshold, fpr=p.fpr, tpr=p.tpr) for p in curves.roc],
        calibration=[CalibrationBin(low=b.low, high=b.high, rows=b.rows, positives=b.positives,
                                    mean_predicted=b.mean_predicted, observed=b.observed) for b in curves.calibration])
        for site, curves in read.items() if curves.view == shared}
    return VersionCurves(task=task, version=view.version, view=None if shared is None else _view_out(shared, spec),
                         thresholds=list(EDGES), sites=sites)
