"""Attack (issue 13): the coordinator sends a task spec the site never approved.

On the old main (9d94f00) a node ran whatever ``task-json`` the round's config carried: every
handler opened the site's DuckDB store and read the records the spec named before anything else,
so a coordinator could make a clinic train, compute statistics on or evaluate any plan it liked. A
simulation over sites that had approved nothing ran to the end and the key holder decrypted its sums.

Now every message is admitted against the site's own policy (``node_agent.admission.admit``)
before any record is read: a plan whose digest is not on the site's approved list gets a declared
reply ``refusal`` ("plan not approved"), audited as ``job-refused`` in the node's log. The site's
store is replaced by garbage here, so a reply that comes back as a DuckDB error would prove a read.
The coordinator shows the refusals ("declined by <site>: ...") and, with fewer than min-sites
willing sites, stops before the key holder decrypts anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import MessageType

from coordinator.errors import NotEnoughSitesError
from federation.audit import AuditLog
from node_agent.client_app import build_client_app
from node_agent.store import DB_NAME
from simulation.engine import run_simulated_federation
from tests.attacks.conftest import (
    call_node,
    fresh_sites,
    job_config,
    node_audit_actions,
    node_message,
    site_admin,
)

MESSAGE_TYPES = ["query.stats", MessageType.TRAIN, "query.calibrate", MessageType.EVALUATE]


@pytest.fixture()
def garbage_site(small_federation, referral_spec, tmp_path):
    """A site that approved nothing, whose store is not a database, and a well-formed job config."""
    (site,) = fresh_sites(small_federation[:1], tmp_path / "sites")
    config, flat = job_config(referral_spec, site, run_id="unapproved", plaintext=False)
    (site / DB_NAME).write_bytes(b"not a duckdb file " * 512)
    return site, config, flat


@pytest.mark.parametrize("message_type", MESSAGE_TYPES)
def test_an_unapproved_plan_is_refused_before_any_record_is_read(message_type, garbage_site):
    site, config, flat = garbage_site
    reply = call_node(build_client_app([site]), node_message(message_type, config, flat))

    assert not reply.has_error(), reply.error.reason  # a DuckDB error here would mean the store was opened
    assert set(reply.content.keys()) == {"refusal"}
    refusal = reply.content["refusal"]
    assert refusal["site-id"] == site.name
    assert str(refusal["reason"]).startswith("plan not approved")
    (refused,) = node_audit_actions(site, "job-refused")
    assert refused["details"]["run_id"] == "unapproved" and "plan not approved" in refused["details"]["reason"]
    assert node_audit_actions(site, "job-accepted") == []


def test_a_plan_approved_in_another_form_is_still_refused(small_federation, referral_spec, tmp_path):
    """Approval is by digest: the same task with one setting changed is another plan."""
    (site,) = fresh_sites(small_federation[:1], tmp_path / "sites")
    site_admin(site, referral_spec)
    changed = referral_spec.model_copy(deep=True)
    changed.model.learning_rate *= 2
    config, flat = job_config(changed, site, run_id="changed")
    reply = call_node(build_client_app([site], allow_plaintext=True), node_message(MessageType.TRAIN, config, flat))
    assert set(reply.content.keys()) == {"refusal"}
    assert str(reply.content["refusal"]["reason"]).startswith("plan not approved")


def test_a_federation_over_sites_that_approved_nothing_stops_before_any_decryption(
        small_federation, referral_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("FENJI_MIN_SITES", "3")
    sites = fresh_sites(small_federation[:3], tmp_path / "sites")
    home = tmp_path / "keyholder"
    with pytest.raises(NotEnoughSitesError) as info:
        run_simulated_federation(referral_spec, sites, rounds=1, approve=False, keyholder_home=home)
    message = str(info.value)
    for site in sites:
        assert f"declined by {site.name}: plan not approved" in message, message
        assert node_audit_actions(site, "job-refused")
        assert node_audit_actions(site, "job-accepted") == []
    decrypts = [e for ledger in Path(home).rglob("ledger.jsonl") for e in AuditLog(ledger).entries()
                if e["action"] == "decrypt"]
    assert decrypts == []
