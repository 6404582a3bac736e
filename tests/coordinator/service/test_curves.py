"""A version's curves per site, served at ``GET /api/v1/models/{task}/versions/{v}/curves`` as ROC points
and calibration bins from what the sites released, with the binary view they are of; numbers that break
the protocol's rules are left out, not drawn. (``register_outcome`` logging them with the run:
test_registry_policy.)"""

from __future__ import annotations

from itertools import pairwise

import pytest

from coordinator.registry import CURVES_ARTIFACT
from federation.curves import CurveView
from tests.coordinator.service.bundle_registry import released_curves
from tests.coordinator.service.conftest import TASK

SITES = {"clinic_a": released_curves(900, 0.25, 0), "clinic_b": released_curves(400, 0.3, 1)}
BROKEN = SITES["clinic_b"] | {"tp-95": 3.0, "fp-95": 0.0}  # a small cell: not drawn


@pytest.fixture()
def with_curves(service):
    """Version 2 of the service's registry with curves from two clinics (as ``register_outcome`` logs them)."""
    client = service.coordinator.registry.client
    run_id = client.get_model_version(f"fenji-{TASK}", "2").run_id
    client.log_dict(run_id, {"sites": SITES | {"clinic_c": BROKEN}}, CURVES_ARTIFACT)
    return service


def test_the_endpoint_serves_roc_points_and_calibration_bins(with_curves):
    with with_curves.client("data_scientist") as client:
        body = client.get(f"/api/v1/models/{TASK}/versions/2/curves").json()
        assert body["version"] == "2" and sorted(body["sites"]) == ["clinic_a", "clinic_b"]
        roc = body["sites"]["clinic_a"]["roc"]
        assert (roc[0]["fpr"], roc[0]["tpr"], roc[-1]["fpr"], roc[-1]["tpr"]) == (1.0, 1.0, 0.0, 0.0)
        assert all(a["tpr"] >= b["tpr"] and a["fpr"] >= b["fpr"] for a, b in pairwise(roc))
        bins = body["sites"]["clinic_a"]["calibration"]
        assert bins[0]["low"] == 0.0 and bins[-1]["high"] == 1.0
        assert sum(b["rows"] for b in bins) == body["sites"]["clinic_a"]["positives"] + body["sites"]["clinic_a"]["negatives"]
        assert client.get(f"/api/v1/models/{TASK}/versions/1/curves").json()["sites"] == {}  # none released
        missing = client.get(f"/api/v1/models/{TASK}/versions/99/curves")
        assert missing.status_code == 404 and "no version 99" in missing.json()["detail"]


def test_the_endpoint_serves_the_view_the_sites_declared(service):
    """Triage sites release "level 2 or more urgent"; a site that sent the curves of another view is not
    overlaid on them; a version without curves still names the view the task's would be of."""
    at_or_above = CurveView("at-or-above", 1).values()
    released = {"clinic_a": SITES["clinic_a"] | at_or_above, "clinic_b": SITES["clinic_b"] | at_or_above,
                "clinic_c": SITES["clinic_a"] | {"view": 1.0}}  # top label
    client = service.coordinator.registry.client
    client.log_dict(client.get_model_version(f"fenji-{TASK}", "2").run_id, {"sites": released}, CURVES_ARTIFACT)
    expected = {"kind": "at-or-above", "cut_index": 1, "cut_class": "2"}
    with service.client("data_scientist") as api:
        body = api.get(f"/api/v1/models/{TASK}/versions/2/curves").json()
        assert body["view"] == expected and sorted(body["sites"]) == ["clinic_a", "clinic_b"]
        assert all(site["view"] == expected for site in body["sites"].values())
        assert api.get(f"/api/v1/models/{TASK}/versions/1/curves").json()["view"] == expected
