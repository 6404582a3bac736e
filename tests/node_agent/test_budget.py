"""The site's privacy-budget ledger: a table in its own DuckDB, one charge per run, refusals past the
budget, a period that forgets old charges, and every charge in the node's audit log."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from node_agent.budget import NODE_AUDIT_FILE, charge_run, node_audit, spent
from node_agent.errors import PolicyRefusal
from node_agent.policy import DPPolicy
from node_agent.store import DB_NAME, SiteStore

_JOB_FILES = ("enrolment.json", "policy.json", NODE_AUDIT_FILE, "answered-*", "*.wal", "*.tmp")


def fresh_site(small_federation, tmp_path) -> Path:
    """A copy of a session site that never took part in a job (the session's sites are shared with
    tests whose runs charge budget at them)."""
    site = tmp_path / "clinic"
    shutil.copytree(small_federation[0], site, ignore=shutil.ignore_patterns(*_JOB_FILES))
    with SiteStore(site) as store:
        store.connection.execute("DROP TABLE IF EXISTS privacy_budget")
    return site


def _ledger(site: Path) -> list[tuple]:
    with duckdb.connect(str(site / DB_NAME), read_only=True) as connection:
        return connection.execute("SELECT run_id, task, mechanism, epsilon, delta FROM privacy_budget "
                                  "ORDER BY charged_at").fetchall()


def _charges(site: Path) -> list[dict]:
    return [e["details"] for e in node_audit(site).entries() if e["action"] == "dp-charge"]


@pytest.fixture()
def site(small_federation, tmp_path) -> Path:
    return fresh_site(small_federation, tmp_path)


def test_the_ledger_is_a_table_in_the_site_store(site):
    before = {p.name for p in site.iterdir()}
    assert charge_run(site, DPPolicy(enabled=True, epsilon_per_run=1.5, delta=1e-4), run_id="r1", task="referral_risk")
    assert _ledger(site) == [("r1", "referral_risk", "dp-sgd", 1.5, 1e-4)]
    # Nothing else holds the ledger: the site folder gained only the node's audit log.
    assert {p.name for p in site.iterdir()} - before == {NODE_AUDIT_FILE}


def test_a_run_is_charged_once(site):
    dp = DPPolicy(enabled=True, epsilon_per_run=2.0)
    assert charge_run(site, dp, run_id="r1", task="referral_risk") is True
    assert charge_run(site, dp, run_id="r1", task="referral_risk") is False  # every later round of the run
    assert spent(site, period_days=dp.period_days) == pytest.approx(2.0)
    assert [row[0] for row in _ledger(site)] == ["r1"]
    assert len(_charges(site)) == 1


def test_a_run_past_the_budget_is_refused_and_not_charged(site):
    dp = DPPolicy(enabled=True, epsilon_per_run=1.0, budget_epsilon=2.5, period_days=30)
    assert charge_run(site, dp, run_id="r1", task="referral_risk")
    assert charge_run(site, dp, run_id="r2", task="referral_risk")
    with pytest.raises(PolicyRefusal, match=r"budget exhausted.*needs epsilon 1.*spent 2 of 2.5 in the last 30 days"):
        charge_run(site, dp, run_id="r3", task="referral_risk")
    assert [row[0] for row in _ledger(site)] == ["r1", "r2"]
    assert spent(site, period_days=30) == pytest.approx(2.0)
    assert [c["run_id"] for c in _charges(site)] == ["r1", "r2"]


def test_a_run_that_uses_the_budget_exactly_is_allowed(site):
    dp = DPPolicy(enabled=True, epsilon_per_run=0.5, budget_epsilon=1.0)
    assert charge_run(site, dp, run_id="r1", task="t") and charge_run(site, dp, run_id="r2", task="t")
    with pytest.raises(PolicyRefusal):
        charge_run(site, dp, run_id="r3", task="t")


def test_spent_counts_only_the_period(site):
    old = datetime.now(timezone.utc) - timedelta(days=400)
    dp = DPPolicy(enabled=True, epsilon_per_run=1.0, budget_epsilon=2.0, period_days=365)
    assert spent(site, period_days=365) == 0.0  # also makes the table
    with SiteStore(site) as store:
        store.connection.execute("INSERT INTO privacy_budget VALUES ('old-run', 'referral_risk', 'dp-sgd', 5.0, 1e-3, ?)",
                                 [old])
    assert spent(site, period_days=365) == 0.0
    assert spent(site, period_days=500) == pytest.approx(5.0)
    assert spent(site, period_days=365, now=old + timedelta(days=1)) == pytest.approx(5.0)
    # The old charge no longer counts against this period's budget ...
    assert charge_run(site, dp, run_id="r1", task="referral_risk")
    assert spent(site, period_days=365) == pytest.approx(1.0)
    # ... but one whose period reaches back to it does.
    longer = dp.model_copy(update={"period_days": 500, "budget_epsilon": 6.5})
    with pytest.raises(PolicyRefusal, match="spent 6 of 6.5 in the last 500 days"):
        charge_run(site, longer, run_id="r2", task="referral_risk")


def test_each_charge_is_in_the_node_audit_log(site):
    dp = DPPolicy(enabled=True, epsilon_per_run=0.75, delta=1e-5)
    charge_run(site, dp, run_id="run-a", task="referral_risk")
    charge_run(site, dp, run_id="run-b", task="triage")
    log = node_audit(site)
    assert log.verify() == 2
    assert [(c["run_id"], c["task"], c["epsilon"], c["delta"]) for c in _charges(site)] == [
        ("run-a", "referral_risk", 0.75, 1e-5), ("run-b", "triage", 0.75, 1e-5)]
    assert all(e["actor"] == "node" for e in log.entries())
