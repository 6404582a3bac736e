"""A version's ROC and calibration curves per site, as the commission's console plots them.

Only what the sites released: the counts their egress guards let out with the final evaluation
(``federation.curves``), which ``coordinator.registry`` keeps with the version's run. Rates are read
from those counts here; a site's numbers that break the protocol's rules are left out, not repaired.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pydantic import BaseModel, Field

from coordinator.registry import CURVES_ARTIFACT
from coordinator.service.versions import ModelRegistry
from federation.curves import EDGES, read_curves
from federation.errors import RegistryError

__all__ = ["CalibrationBin", "RocPoint", "SiteCurves", "VersionCurves", "version_curves"]


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
    positives: int
    negatives: int
    roc: list[RocPoint] = Field(description="from threshold 0 (1, 1) to above 1 (0, 0), at the kept thresholds")
    calibration: list[CalibrationBin] = Field(description="the released bins, lowest first")


class VersionCurves(BaseModel):
    task: str
    version: str
    thresholds: list[float] = Field(description="where the protocol lets a site cut its curves")
    sites: dict[str, SiteCurves] = Field(description="per site that released curves (binary tasks; sites with "
                                                     "enough held-out patients of each class)")


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
    """Each site's curves for ``task`` ``version``; ``NotFound`` (404) for an unknown version."""
    view = registry.existing(task, version)
    sites: dict[str, SiteCurves] = {}
    for site, values in sorted(_released(registry, view.run_id).items()):
        try:
            curves = read_curves({str(k): float(v) for k, v in values.items()})
        except (AttributeError, TypeError, ValueError):
            curves = None
        if curves is not None:
            sites[str(site)] = SiteCurves(
                positives=curves.positives, negatives=curves.negatives,
                roc=[RocPoint(threshold=p.threshold, fpr=p.fpr, tpr=p.tpr) for p in curves.roc],
                calibration=[CalibrationBin(low=b.low, high=b.high, rows=b.rows, positives=b.positives,
                                            mean_predicted=b.mean_predicted, observed=b.observed)
                             for b in curves.calibration])
    return VersionCurves(task=task, version=view.version, thresholds=list(EDGES), sites=sites)
