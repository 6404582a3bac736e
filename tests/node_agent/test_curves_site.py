"""The curves at the site: a clinic's ClientApp sends its ROC and reliability counts with the final
evaluation (through its egress guard), of the binary view its task declares (positive class, top label,
triage level 2 or more urgent), and the curves read from them match the ones computed on its held-out
rows within rounding; the guard refuses a curve number or view that is undeclared or not suppressed,
whatever the handler does."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from flwr.app import (
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)

from federation.curves import TOP_LABEL, CurveView, read_curves
from models.calibration import Calibration
from models.encoding import EncodingParams
from models.nets import build_model, set_flat
from models.spec import load_task
from models.training import TrainConfig, predict_proba
from node_agent.client_app import build_client_app
from node_agent.egress import COUNT_ROUNDING, check_reply, make_egress_guard, release
from node_agent.errors import EgressViolation
from node_agent.ingest import ingest_file
from node_agent.local import load_site_data, train_update
from node_agent.mapping import load_mapping
from node_agent.policy import SitePolicy
from node_agent.store import SiteStore
from tests.attacks.conftest import (
    call_node,
    fresh_sites,
    job_config,
    node_message,
    site_admin,
)

MIN_N = 10  # the sites' default minimum n


def _site_with_many_held_out_rows(small_federation, spec, tmp_path):
    """site_b with four in five of its rows held out (the site's own split), so that each class has
    enough held-out patients for a few cells; and a model trained on its default split first."""
    (site,) = fresh_sites(small_federation[1:2], tmp_path)
    if spec.name != "referral_risk":  # the clinic's export holds every task's label: ingest it for this task too
        with SiteStore(site) as store:
            ingest_file(store, spec, small_federation[1].parent.parent / "exports" / "site_b.csv", load_mapping(None))
    site_admin(site, spec)
    config, initial = job_config(spec, site, run_id="curves", final=True, personalisation=False,
                                 **{"local-only-epochs": 1})
    params = EncodingParams.from_dict(json.loads(str(config["encoding"])))
    flat, _, _ = train_update(load_site_data(site, spec), params, initial, TrainConfig())  # a model that ranks
    with SiteStore(site) as store:
        rows = store.load(spec)
        store.set_split(spec, pd.DataFrame({"record_id": rows["record_id"],
                                            "split": np.where(np.arange(len(rows)) % 5 == 0, "train", "test")}))
    return site, config, params, flat


def test_the_final_evaluation_carries_curves_that_match_the_sites_rows(small_federation, referral_spec, tmp_path):
    site, config, params, flat = _site_with_many_held_out_rows(small_federation, referral_spec, tmp_path)
    reply = call_node(build_client_app([site], allow_plaintext=True), node_message(MessageType.EVALUATE, config, flat))
    assert not reply.has_error() and "refusal" not in reply.content, reply.content
    released = {k: float(v) for k, v in reply.content["curves"].items()}
    curves = read_curves(released, min_n=MIN_N, rounding=COUNT_ROUNDING)
    assert curves is not None and len(curves.roc) >= 3 and curves.calibration

    # The reference: the same model's risks on the site's held-out rows, straight from the rows.
    _, _, x, y = load_site_data(site, referral_spec).encoded(params)
    p = predict_proba(set_flat(build_model(referral_spec, x.shape[1]), flat), referral_spec, x, Calibration())[:, 1]
    assert abs(curves.positives - y.sum()) <= COUNT_ROUNDING / 2
    for point in curves.roc[1:-1]:
        assert abs(point.tpr - (p[y == 1] >= point.threshold).mean()) <= COUNT_ROUNDING / curves.positives
        assert abs(point.fpr - (p[y == 0] >= point.threshold).mean()) <= COUNT_ROUNDING / curves.negatives
    for b in curves.calibration:
        inside = (p >= b.low) & (p < b.high) if b.high < 1 else p >= b.low
        assert min((y[inside] == 1).sum(), (y[inside] == 0).sum()) >= MIN_N  # no small cell behind a bin
        assert abs(b.observed - y[inside].mean()) <= 3 * COUNT_ROUNDING / b.rows


@pytest.mark.parametrize(("task", "view"), [("diagnosis", TOP_LABEL), ("triage", CurveView("at-or-above", 1))])
def test_a_multiclass_or_ordinal_task_releases_the_curves_of_its_view(small_federation, tmp_path, task, view):
    spec = load_task(task)
    site, config, params, flat = _site_with_many_held_out_rows(small_federation, spec, tmp_path)
    reply = call_node(build_client_app([site], allow_plaintext=True), node_message(MessageType.EVALUATE, config, flat))
    assert not reply.has_error() and "refusal" not in reply.content, reply.content
    released = {k: float(v) for k, v in reply.content["curves"].items()}
    curves = read_curves(released, min_n=MIN_N, rounding=COUNT_ROUNDING)
    assert curves is not None and curves.view == view and len(curves.roc) >= 3 and curves.calibration

    # The reference, straight from the rows: the top class right or wrong (diagnosis); triage level "1" or
    # "2" against P(level 1) + P(level 2) (triage: where the default tier policy refers on triage alone).
    _, _, x, y = load_site_data(site, spec).encoded(params)
    proba = predict_proba(set_flat(build_model(spec, x.shape[1]), flat), spec, x, Calibration())
    if task == "diagnosis":
        score, event = proba.max(axis=1), (proba.argmax(axis=1) == y)
    else:
        levels = np.array([int(spec.label.classes[c]) for c in y])
        score, event = proba[:, 0] + proba[:, 1], levels <= 2
    assert abs(curves.positives - event.sum()) <= COUNT_ROUNDING / 2
    assert abs(curves.negatives - (~event).sum()) <= COUNT_ROUNDING / 2
    for point in curves.roc[1:-1]:
        assert abs(point.tpr - (score[event] >= point.threshold).mean()) <= COUNT_ROUNDING / curves.positives
        assert abs(point.fpr - (score[~event] >= point.threshold).mean()) <= COUNT_ROUNDING / curves.negatives
    for b in curves.calibration:  # the same suppression: no cell of fewer than min n with or without the event
        inside = (score >= b.low) & (score < b.high) if b.high < 1 else score >= b.low
        assert min(event[inside].sum(), (~event[inside]).sum()) >= MIN_N
        assert abs(b.observed - event[inside].mean()) <= 3 * COUNT_ROUNDING / b.rows


def test_no_curves_with_a_round_evaluation(small_federation, referral_spec, tmp_path):
    (site,) = fresh_sites(small_federation[1:2], tmp_path)
    site_admin(site, referral_spec)
    config, flat = job_config(referral_spec, site, run_id="curves-round")
    reply = call_node(build_client_app([site], allow_plaintext=True), node_message(MessageType.EVALUATE, config, flat))
    assert "metrics" in reply.content and "curves" not in reply.content


def _evaluate_reply(curves: dict[str, float]) -> Message:
    metadata = Metadata(run_id=1, message_id="", src_node_id=7, dst_node_id=0, reply_to_message_id="m",
                        group_id="", created_at=0.0, ttl=60.0, message_type=MessageType.EVALUATE)
    content = {"metrics": MetricRecord({"n": 300.0, "num-examples": 300}), "site": ConfigRecord({"site-id": "site_a"}),
               "curves": MetricRecord(curves)}
    return Message(content=RecordDict(content), metadata=metadata)


# Two bins, [0, 0.5) of 255 rows and [0.5, 1] of 45: each mean on its grid, step k * width / rows.
RELEASED = {"positives": 60.0, "negatives": 240.0, "tp-50": 30.0, "fp-50": 15.0, "mean-00": 25 * 2.5 / 255,
            "mean-50": 0.5 + 5 * 2.5 / 45}


@pytest.mark.parametrize(("change", "match"), [
    ({"tp-50": 8.0}, "below the site's minimum n"),  # a cell the site should have suppressed
    ({"tp-50": 33.0}, "not rounded"),
    ({"fp-50": 235.0}, "a cell between released counts"),  # 5 negatives below 0.5: the complement is small
])
def test_the_guard_refuses_a_curve_number_that_is_not_suppressed(change, match):
    policy = SitePolicy(min_n=10)
    assert "curves" in release(_evaluate_reply(RELEASED), policy).content
    with pytest.raises(EgressViolation, match=f"curves: .*{match}"):
        release(_evaluate_reply(RELEASED | change), policy)


@pytest.mark.parametrize(("view", "match"), [
    ({"view": 7.0}, "not a declared view"),
    ({"view": 1.0, "view-class": 1.0}, "only with it"),
    ({"view": 2.0, "view-class": -1.0}, "not a class index"),
])
def test_the_guard_refuses_an_undeclared_view(view, match):
    policy = SitePolicy(min_n=10)
    for good in ({"view": 1.0}, {"view": 2.0, "view-class": 1.0}):
        assert release(_evaluate_reply(RELEASED | good), policy).content["curves"]["view"] == good["view"]
    with pytest.raises(EgressViolation, match=f"curves: .*{match}"):
        release(_evaluate_reply(RELEASED | view), policy)
    with pytest.raises(EgressViolation, match="undeclared metric 'view-name'"):
        check_reply(_evaluate_reply(RELEASED | {"view": 1.0, "view-name": 1.0}))


def test_the_guard_refuses_an_undeclared_curve_number():
    check_reply(_evaluate_reply(RELEASED))
    with pytest.raises(EgressViolation, match="undeclared metric 'auroc-50'"):
        check_reply(_evaluate_reply(RELEASED | {"auroc-50": 0.8}))
    guard = make_egress_guard(policy_of=lambda context: SitePolicy(min_n=10))
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(EgressViolation, match="undeclared"):
        guard(_evaluate_reply({}), context, lambda message, ctx: _evaluate_reply(RELEASED | {"tp-raw": 3.0}))
    assert np.isclose(guard(_evaluate_reply({}), context, lambda m, c: _evaluate_reply(RELEASED))
                      .content["curves"]["tp-50"], 30.0)
