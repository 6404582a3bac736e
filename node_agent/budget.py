"""The site's privacy-budget ledger, in its own DuckDB (table ``privacy_budget``), and its audit log.

Every release that spends differential-privacy budget is one row: which run, which task, the
epsilon and delta the site's accountant set for the whole run. A run is charged once, before its
first training step; a run that would take the site past its budget for the period is refused.
The node's hash-chained audit log (``node-audit.jsonl`` in the site folder) records every job the
site accepted or declined, every charge, and every change to its policy.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from federation.audit import AuditLog
from node_agent.errors import IngestError, PolicyRefusal
from node_agent.policy import DPPolicy
from node_agent.store import SiteStore

__all__ = ["NODE_AUDIT_FILE", "charge_run", "node_audit", "spent"]

NODE_AUDIT_FILE = "node-audit.jsonl"
_TABLE = """CREATE TABLE IF NOT EXISTS privacy_budget (
    run_id VARCHAR PRIMARY KEY, task VARCHAR, mechanism VARCHAR, epsilon DOUBLE, delta DOUBLE,
    charged_at TIMESTAMPTZ)"""


def node_audit(site_dir: Path) -> AuditLog:
    return AuditLog(Path(site_dir) / NODE_AUDIT_FILE)


def _store(site_dir: Path, busy_timeout: float = 30.0) -> SiteStore:
    """A write connection to the site store, waiting while another process holds it."""
    deadline, pause = time.monotonic() + busy_timeout, 0.05
    while True:
        try:
            store = SiteStore(site_dir)
            store.connection.execute(_TABLE)
            return store
        except IngestError:
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.5)


def spent(site_dir: Path, *, period_days: int, now: datetime | None = None, busy_timeout: float = 30.0) -> float:
    """Epsilon charged in the last ``period_days`` days (waiting up to ``busy_timeout`` s for the store)."""
    since = (now or datetime.now(timezone.utc)) - timedelta(days=period_days)
    with _store(site_dir, busy_timeout) as store:
        (total,) = store.connection.execute(
            "SELECT coalesce(sum(epsilon), 0) FROM privacy_budget WHERE charged_at >= ?", [since]).fetchone()
    return float(total)


def charge_run(site_dir: Path, dp: DPPolicy, *, run_id: str, task: str, mechanism: str = "dp-sgd") -> bool:
    """Charge ``dp.epsilon_per_run`` for ``run_id`` (once; ``False`` if already charged).

    Raises
    ------
    PolicyRefusal
        If the charge would take the site past ``dp.budget_epsilon`` for the period.
    """
    since = datetime.now(timezone.utc) - timedelta(days=dp.period_days)
    try:
        store = _store(site_dir)
    except IngestError as exc:
        raise PolicyRefusal(f"the budget ledger cannot be written now ({exc}); nothing is released") from exc
    with store:
        connection = store.connection
        try:
            connection.execute("BEGIN TRANSACTION")
            if connection.execute("SELECT 1 FROM privacy_budget WHERE run_id = ?", [run_id]).fetchone():
                connection.execute("ROLLBACK")
                return False
            (total,) = connection.execute("SELECT coalesce(sum(epsilon), 0) FROM privacy_budget "
                                          "WHERE charged_at >= ?", [since]).fetchone()
            if float(total) + dp.epsilon_per_run > dp.budget_epsilon + 1e-12:
                connection.execute("ROLLBACK")
                raise PolicyRefusal(
                    f"privacy budget exhausted: this run needs epsilon {dp.epsilon_per_run:g}, the site has spent "
                    f"{float(total):g} of {dp.budget_epsilon:g} in the last {dp.period_days} days")
            connection.execute("INSERT INTO privacy_budget VALUES (?, ?, ?, ?, ?, ?)",
                               [run_id, task, mechanism, dp.epsilon_per_run, dp.delta, datetime.now(timezone.utc)])
            connection.execute("COMMIT")
        except duckdb.Error as exc:
            raise PolicyRefusal(f"the budget ledger refused the charge: {exc}") from exc
    node_audit(site_dir).append(actor="node", action="dp-charge", run_id=run_id, task=task,
                                epsilon=dp.epsilon_per_run, delta=dp.delta)
    return True
