"""The ROC and reliability curves a site releases with its final evaluation of the global model.

Every built-in task releases them, of the binary view its spec declares (``federation.curves.curve_view``):
the calibrated global model's probability of the positive class for referral risk, its top-label
confidence against "the top class is the true one" for diagnosis, and P(triage level ``c`` or more
urgent) against that event for triage (``c``: where the built-in tier policy sends a patient to the
county tier on triage alone). One (score, event) pair per held-out row, cut where the protocol allows,
suppressed below the site's minimum n and rounded as the egress guard's counts are; the guard checks
each number, the view's too, again before the reply leaves.
"""

from __future__ import annotations

import numpy as np
from flwr.app import MetricRecord

from federation.curves import CURVES_RECORD, curve_view, release_curves
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
    (too few held-out patients with or without the view's event to release any cell)."""
    _, _, x_test, y_test = data.encoded(params)
    if len(y_test) == 0:
        return {}
    model = set_flat(build_model(data.spec, x_test.shape[1]), flat)
    view = curve_view(data.spec)
    score, event = view.pairs(predict_proba(model, data.spec, x_test, calibration), np.asarray(y_test))
    released = release_curves(score, event, min_n=min_n, rounding=COUNT_ROUNDING, view=view)
    return {CURVES_RECORD: MetricRecord(released)} if released else {}
