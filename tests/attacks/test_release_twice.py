"""Attack: ask a site the same question twice, and average away its noise.

A site that adds DP noise charges its budget once per run (the run id names the charge). On the
old main (3095830) a plaintext statistics query with Laplace noise was answered again, with fresh
noise, when the coordinator sent the same run's message a second time: the charge was not repeated
("already charged"), so each repeat was a release no budget counted, and the mean of many answers
converges on the exact count. Only the encrypted path refused a repeat (the key holder's label is
claimed once per site); the plaintext path of a training round was claimed under another name, so
a round answered encrypted could be answered again in plaintext (in a simulation: real nodes send no
plaintext), and a repeated plaintext round ended in an error rather than the site's declared refusal.

Now every (run, phase, round) a site answers is claimed once, under one name, before any record is
read (``node_agent.client_app.RELEASED_ONCE``), however the reply would leave.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, MessageType

from federation.analytics import Count, canonical
from node_agent.budget import spent
from node_agent.client_app import build_client_app
from node_agent.policy import save_site_policy
from tests.attacks.conftest import call_node, job_config, node_message, site_admin
from tests.node_agent.test_analytics_site import avpu_site, policy_with


def _refused(reply) -> str:
    assert not reply.has_error(), reply.error.reason
    assert set(reply.content.keys()) == {"refusal"}, "the site answered the same question twice"
    return str(reply.content["refusal"]["reason"])


def test_a_noised_query_asked_again_in_the_same_run_is_refused(tmp_path, referral_spec):
    site = avpu_site(tmp_path, referral_spec, 14)
    policy = policy_with(site, kinds=("count",), spec=referral_spec, dp_epsilon=0.5, budget=10.0)
    policy.allow_plaintext = True
    save_site_policy(site, policy)
    app = build_client_app([site], allow_plaintext=True)
    config = ConfigRecord({"task-json": referral_spec.model_dump_json(), "task-name": referral_spec.name,
                           "run-id": "q1", "analytics-query": canonical(Count(group_by="avpu")), "plaintext": True})
    first = call_node(app, node_message("query.analytics", config))
    assert "arrays" in first.content, first.content
    charged = spent(site, period_days=365)
    assert charged == 0.5
    reason = _refused(call_node(app, node_message("query.analytics", config)))
    assert "already answered" in reason
    assert spent(site, period_days=365) == charged


def test_a_training_round_leaves_the_site_once_whatever_the_path(site, referral_spec):
    site_admin(site, referral_spec, dp={"epsilon_per_run": 1.0, "budget_epsilon": 10.0})
    app = build_client_app([site], allow_plaintext=True)
    config, flat = job_config(referral_spec, site, run_id="r1", num_rounds=2, server_round=1)
    assert "arrays" in call_node(app, node_message(MessageType.TRAIN, config, flat)).content
    # The same round again, with another global model: another noisy release of the site's rows.
    reason = _refused(call_node(app, node_message(MessageType.TRAIN, config, flat * 0.5)))
    assert "already answered" in reason
    # The run's next round is still answered.
    config2, _ = job_config(referral_spec, site, run_id="r1", num_rounds=2, server_round=2)
    assert "arrays" in call_node(app, node_message(MessageType.TRAIN, config2, flat)).content
