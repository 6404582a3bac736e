"""The node's admission promises that sit beside the attack tests: one evaluation per round, a
malformed job is a declared refusal, and a DP run the site declines spends no budget."""

from __future__ import annotations

import pytest
from flwr.app import MessageType

from node_agent.client_app import build_client_app
from tests.attacks.conftest import (
    budget_charges,
    call_node,
    job_config,
    node_message,
    site_admin,
)


def test_a_node_answers_one_evaluation_per_round(site, referral_spec):
    site_admin(site, referral_spec)
    config, flat = job_config(referral_spec, site, run_id="eval-once")
    app = build_client_app([site], allow_plaintext=True)
    first = call_node(app, node_message(MessageType.EVALUATE, config, flat))
    assert "metrics" in first.content
    second = call_node(app, node_message(MessageType.EVALUATE, config, flat * 0.5))  # another model, same round
    assert set(second.content.keys()) == {"refusal"}
    assert "already answered" in str(second.content["refusal"]["reason"])
    config["server-round"] = 2
    assert "metrics" in call_node(app, node_message(MessageType.EVALUATE, config, flat)).content


@pytest.mark.parametrize("broken", [{"task-json": "{not json"}, {"num-rounds": "two"}])
def test_a_malformed_job_is_a_declared_refusal(site, referral_spec, broken):
    site_admin(site, referral_spec)
    config, flat = job_config(referral_spec, site, run_id="malformed")
    for key, value in broken.items():
        config[key] = value
    reply = call_node(build_client_app([site], allow_plaintext=True), node_message(MessageType.TRAIN, config, flat))
    assert not reply.has_error(), reply.error.reason
    assert "malformed job" in str(reply.content["refusal"]["reason"])


def test_a_dp_run_the_site_declines_spends_no_budget(site, referral_spec):
    site_admin(site, referral_spec, min_n=10_000, dp={"epsilon_per_run": 1.0, "budget_epsilon": 5.0})
    config, flat = job_config(referral_spec, site, run_id="declined")
    reply = call_node(build_client_app([site], allow_plaintext=True), node_message(MessageType.TRAIN, config, flat))
    assert "minimum n" in str(reply.content["refusal"]["reason"])
    assert budget_charges(site) == []
