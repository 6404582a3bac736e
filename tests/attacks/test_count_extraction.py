"""Attack (issue 13): extract a count at a small site through an evaluation.

The coordinator chooses the model a site evaluates. A logistic model that puts all its weight on
one input predicts "1" exactly when that feature is above its mean, so ``accuracy × n`` is the number
of held-out patients at that site whose label agrees with that one feature, and ``log-loss`` at
n = 1 is one patient's label. On the old main (9d94f00) a node evaluated any model on any number of
rows and sent ``accuracy``, ``log-loss``, ``n`` and ``num-examples`` back exactly, for any n ≥ 1;
the egress guard only checked that the numbers were of declared kinds.

Now a site with fewer held-out rows than its policy's ``min_n`` declines the evaluation (a declared
refusal, no metrics); and whatever a handler produces, the egress guard's ``release`` refuses a reply
with a count below ``min_n`` and rounds the held-out counts of an evaluation to multiples of 5.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    ConfigRecord,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)

from node_agent.client_app import build_client_app
from node_agent.egress import COUNT_ROUNDING, make_egress_guard, release
from node_agent.errors import EgressViolation
from node_agent.local import load_site_data
from node_agent.policy import SitePolicy
from tests.attacks.conftest import (
    call_node,
    fresh_sites,
    job_config,
    node_audit_actions,
    node_message,
    site_admin,
)


def _splitting_model(flat: np.ndarray) -> np.ndarray:
    """Logistic weights that split on the first input alone (the model's last entry is its bias)."""
    crafted = np.zeros_like(flat)
    crafted[0] = 50.0
    return crafted


@pytest.mark.parametrize("min_n", ["held-out rows + 1", 10_000])
def test_an_evaluation_at_a_site_below_min_n_returns_a_refusal_not_metrics(min_n, site, referral_spec):
    data = load_site_data(site, referral_spec)
    if min_n == "held-out rows + 1":  # enough training rows, too few held-out rows
        min_n = len(data.test_frame) + 1
        assert len(data.train_frame) >= min_n
    site_admin(site, referral_spec, min_n=min_n)
    config, flat = job_config(referral_spec, site, run_id="extract")
    app = build_client_app([site], allow_plaintext=True)
    for final in (False, True):
        config["final"] = final
        reply = call_node(app, node_message(MessageType.EVALUATE, config, _splitting_model(flat)))
        assert not reply.has_error(), reply.error.reason
        assert set(reply.content.keys()) == {"refusal"}, "metrics left a site below its minimum n"
        assert f"minimum n ({min_n})" in str(reply.content["refusal"]["reason"])
    assert len(node_audit_actions(site, "job-refused")) == 2


def _evaluate_reply(metrics: dict) -> Message:
    metadata = Metadata(run_id=1, message_id="r", src_node_id=1, dst_node_id=0, reply_to_message_id="m",
                        group_id="1", created_at=0.0, ttl=60.0, message_type=MessageType.EVALUATE)
    content = {"metrics": MetricRecord(metrics), "site": ConfigRecord({"site-id": "site_a"})}
    return Message(content=RecordDict(content), metadata=metadata)


@pytest.mark.parametrize("count", ["n", "num-examples", "local-n", "personal-n"])
def test_the_egress_guard_withholds_a_reply_with_n_below_min_n_whatever_the_handler_did(count):
    """A handler that forgot the rule (or a bundle that dropped it) still cannot send the numbers."""
    small = {"n": 40.0, "num-examples": 40.0, "accuracy": 0.75, "log-loss": 0.5} | {count: 1.0}
    policy = SitePolicy(min_n=10)
    with pytest.raises(EgressViolation, match="minimum n"):
        release(_evaluate_reply(small), policy)

    guard = make_egress_guard(policy_of=lambda context: policy)
    with pytest.raises(EgressViolation, match="minimum n"):
        guard(_evaluate_reply({}), None, lambda message, context: _evaluate_reply(small))


def test_evaluation_counts_leave_the_site_rounded_to_five(small_federation, referral_spec, tmp_path):
    sites = fresh_sites(small_federation, tmp_path / "sites")
    held_out = {s: len(load_site_data(s, referral_spec).test_frame) for s in sites}
    # A site whose held-out count is not already a multiple of 5, so rounding shows.
    site = next(s for s, n in held_out.items() if n % COUNT_ROUNDING)
    site_admin(site, referral_spec)
    config, flat = job_config(referral_spec, site, run_id="counts")
    reply = call_node(build_client_app([site], allow_plaintext=True),
                      node_message(MessageType.EVALUATE, config, _splitting_model(flat)))
    metrics = reply.content["metrics"]
    for key in ("n", "num-examples"):
        assert metrics[key] % COUNT_ROUNDING == 0, (key, metrics[key])
        assert abs(metrics[key] - held_out[site]) <= COUNT_ROUNDING / 2
    assert "train-loss" not in metrics
