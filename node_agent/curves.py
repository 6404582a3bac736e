"""The ROC and reliability curves a site releases with its final evaluation of the global model.

Binary tasks only (``referral_risk`` and its text variant): the curves are of the calibrated global
model's probability of the positive class on the site's held-out rows, cut where the protocol allows
(``federation.curves``), suppressed below the site's minimum n and rounded as the egress guard's
counts are; the guard checks each number again before the reply leaves. Multiclass and ordinal tasks
(diagnosis, triage) release no curves: one class against the rest would be another choice of cells,
and their per-site metrics already cover calibration (ECE) and ranking (macro AUROC).
"""

from __future__ import annotations

import numpy as np
from flwr.app import MetricRecord

from federation.curves import CURVES_RECORD, release_curves
from models.calibration import Calibration
from models.encoding import EncodingParams
from models.nets import build_model, set_flat
from models.training import predict_proba
from node_agent.egress import COUNT_ROUNDING
from node_agent.local import SiteData

__all__ = ["curve_records"]


def curve_records(data: SiteData, params: EncodingParams, flat: np.ndarray, calibration: Calibration,
                  min_n: int) -> dict[str, MetricRecord]:
    """``{"curves": record}`` of what this site may release about the global model ``flat``, or ``{}``
    (not a binary task, or too few held-out patients of a class to release any cell)."""
    if data.spec.label.kind != "binary":
        return {}
    _, _, x_test, y_test = data.encoded(params)
    if len(y_test) == 0:
        return {}
    model = set_flat(build_model(data.spec, x_test.shape[1]), flat)
    proba = predict_proba(model, data.spec, x_test, calibration)[:, 1]
    released = release_curves(proba, np.asarray(y_test), min_n=min_n, rounding=COUNT_ROUNDING)
    return {CURVES_RECORD: MetricRecord(released)} if released else {}
