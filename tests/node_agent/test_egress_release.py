"""Suppression at the source: every declared number passes the site's small-number rules
(``release``), and a reply holds only declared records (``check_reply``), refusals included."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)

from node_agent.egress import check_reply, make_egress_guard, release
from node_agent.errors import EgressViolation
from node_agent.policy import SitePolicy


def _reply(content: dict, message_type: str = MessageType.TRAIN) -> Message:
    metadata = Metadata(run_id=1, message_id="", src_node_id=7, dst_node_id=0, reply_to_message_id="m",
                        group_id="", created_at=0.0, ttl=60.0, message_type=message_type)
    return Message(content=RecordDict(content), metadata=metadata)


def _ciphertext() -> ArrayRecord:
    return ArrayRecord({"ciphertext": Array(np.frombuffer(b"\x01\x02\x03", dtype=np.uint8))})


def _train_reply(rows: int = 123, loss: float = 0.41) -> Message:
    return _reply({"ciphertext": _ciphertext(), "metrics": MetricRecord({"num-examples": rows, "train-loss": loss}),
                   "site": ConfigRecord({"site-id": "site_a", "dp-epsilon": 0.0})})


def _evaluate_reply(**metrics: float) -> Message:
    return _reply({"metrics": MetricRecord(metrics), "site": ConfigRecord({"site-id": "site_a"})},
                  MessageType.EVALUATE)


def test_train_loss_is_dropped_by_default():
    reply = release(_train_reply(), SitePolicy())
    metrics = reply.content["metrics"]
    assert "train-loss" not in metrics
    assert metrics["num-examples"] == 123  # the protocol's row count stays exact
    assert "ciphertext" in reply.content


def test_train_loss_leaves_when_the_policy_allows_it():
    metrics = release(_train_reply(loss=0.41), SitePolicy(release_train_loss=True)).content["metrics"]
    assert metrics["train-loss"] == pytest.approx(0.41)
    assert metrics["num-examples"] == 123


@pytest.mark.parametrize(("reply", "named"), [
    (lambda: _train_reply(rows=9), "num-examples"),
    (lambda: _evaluate_reply(**{"n": 9.0, "num-examples": 40, "accuracy": 1.0}), "n"),
    (lambda: _evaluate_reply(**{"n": 40.0, "num-examples": 40, "local-n": 3.0, "local-accuracy": 1.0}), "local-n"),
    (lambda: _evaluate_reply(**{"n": 40.0, "num-examples": 40, "personal-n": 1.0, "personal-log-loss": 0.01}),
     "personal-n"),
], ids=["train-rows", "held-out-n", "local-n", "personal-n"])
def test_a_count_below_min_n_is_refused(reply, named):
    with pytest.raises(EgressViolation, match=f"{named}.*below the site's minimum n \\(10\\)"):
        release(reply(), SitePolicy(min_n=10))


def test_min_n_is_the_sites_own_and_inclusive():
    assert release(_train_reply(rows=10), SitePolicy(min_n=10)).content["metrics"]["num-examples"] == 10
    with pytest.raises(EgressViolation):
        release(_train_reply(rows=49), SitePolicy(min_n=50))


def test_evaluation_counts_are_rounded_to_five_and_train_counts_stay_exact():
    reply = release(_evaluate_reply(**{"n": 123.0, "num-examples": 123, "local-n": 122.0, "personal-n": 128.0,
                                       "accuracy": 0.8137, "auroc": 0.9}), SitePolicy(min_n=10))
    metrics = reply.content["metrics"]
    assert (metrics["n"], metrics["num-examples"], metrics["local-n"], metrics["personal-n"]) == (125, 125, 120, 130)
    assert metrics["accuracy"] == pytest.approx(0.8137) and metrics["auroc"] == pytest.approx(0.9)
    assert release(_train_reply(rows=123), SitePolicy()).content["metrics"]["num-examples"] == 123
    stats = _reply({"ciphertext": _ciphertext(), "metrics": MetricRecord({"num-examples": 123}),
                    "site": ConfigRecord({"site-id": "site_a"})}, MessageType.QUERY)
    assert release(stats, SitePolicy()).content["metrics"]["num-examples"] == 123


def test_a_refusal_passes_both_checks_unchanged():
    reply = _reply({"refusal": ConfigRecord({"site-id": "site_a", "reason": "plan not approved"})})
    check_reply(reply)
    assert release(reply, SitePolicy(min_n=1000)) is reply
    assert dict(reply.content["refusal"]) == {"site-id": "site_a", "reason": "plan not approved"}


@pytest.mark.parametrize(("content", "message"), [
    ({"notes": ConfigRecord({"site-id": "site_a"})}, "undeclared config record 'notes'"),
    ({"refusal": ConfigRecord({"site-id": "site_a", "reason": "no", "rows": 7})}, r"undeclared config values \['rows'\]"),
    ({"site": ConfigRecord({"site-id": "site_a", "ages": "34,56"})}, r"undeclared config values \['ages'\]"),
    ({"metrics": MetricRecord({"num-positives": 3})}, "undeclared metric 'num-positives'"),
], ids=["record", "refusal-key", "site-key", "metric"])
def test_check_reply_rejects_undeclared_content(content, message):
    with pytest.raises(EgressViolation, match=message):
        check_reply(_reply(content))


def test_the_guard_applies_the_sites_policy_to_every_reply():
    policy = SitePolicy(min_n=10)
    guard = make_egress_guard(policy_of=lambda context: policy)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    request = _reply({}, MessageType.EVALUATE)
    reply = guard(request, context, lambda message, ctx: _evaluate_reply(**{"n": 47.0, "num-examples": 47,
                                                                           "accuracy": 0.5}))
    assert reply.content["metrics"]["n"] == 45
    with pytest.raises(EgressViolation):
        guard(request, context, lambda message, ctx: _evaluate_reply(**{"n": 4.0, "num-examples": 4}))
    with pytest.raises(EgressViolation, match="undeclared"):
        guard(request, context, lambda message, ctx: _reply({"raw": ConfigRecord({"x": 1})}))
