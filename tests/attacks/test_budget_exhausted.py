"""Attack (issue 13): spend a site's privacy budget many times over, one DP run after another.

Each DP run releases updates that spend its ε on the site's records; run it again and the spend adds
up. On the old main (9d94f00) nothing at the node recorded what a run had spent, so a coordinator could
start as many "ε = 1" runs over the same records as it liked, each one trained and released.

Now each DP run is charged to the node's budget ledger (table ``privacy_budget`` in its DuckDB)
before its first training step, once per run, and a run that would take the site past its budget
for the period is refused ("privacy budget exhausted") before anything is trained.
"""

from __future__ import annotations

from flwr.app import MessageType

from node_agent.client_app import build_client_app
from tests.attacks.conftest import (
    budget_charges,
    call_node,
    fresh_sites,
    job_config,
    node_audit_actions,
    node_message,
    site_admin,
)


def test_a_run_past_the_sites_budget_is_refused_before_training(small_federation, referral_spec, tmp_path):
    (site,) = fresh_sites(small_federation[:1], tmp_path / "sites")
    site_admin(site, referral_spec, dp={"epsilon_per_run": 1.0, "budget_epsilon": 1.5})
    app = build_client_app([site], allow_plaintext=True)

    first, flat = job_config(referral_spec, site, run_id="run-1", num_rounds=2)
    reply = call_node(app, node_message(MessageType.TRAIN, first, flat))
    assert "arrays" in reply.content and reply.content["site"]["dp-epsilon"] == 1.0
    # The run's second round is the same run: it trains and is not charged again.
    first["server-round"] = 2
    reply = call_node(app, node_message(MessageType.TRAIN, first, flat))
    assert "arrays" in reply.content
    assert budget_charges(site) == [("run-1", 1.0)]

    second, flat = job_config(referral_spec, site, run_id="run-2", num_rounds=2)
    reply = call_node(app, node_message(MessageType.TRAIN, second, flat))
    assert not reply.has_error(), reply.error.reason
    assert set(reply.content.keys()) == {"refusal"}, "a second run trained past the site's budget"
    assert str(reply.content["refusal"]["reason"]).startswith("privacy budget exhausted")
    assert budget_charges(site) == [("run-1", 1.0)]
    (charge,) = node_audit_actions(site, "dp-charge")
    assert charge["details"]["run_id"] == "run-1"
    assert [e["details"]["run_id"] for e in node_audit_actions(site, "job-refused")] == ["run-2"]
