"""The site report: what a clinic tells the commission about itself with each run's statistics reply.

Only coarse, declared numbers (``node_agent.egress.REPORT_KINDS``), each checked again by the egress
guard before it leaves:

- the run's task's **rows** as the edges of a bucket (``ROW_EDGES``; the buckets below the site's
  ``min_n`` merge into one) and its **quarantine rate** (rows quarantined / rows read at ingest) as the
  edges of a bucket (``QUARANTINE_EDGES``), withheld when fewer than ``min_n`` rows were read;
- **plans approved** (on the site's list now), **runs accepted** and **runs refused** in the period
  (distinct run ids in the node audit log): the site's own decisions, exact, since the coordinator
  received each acceptance and refusal anyway;
- the **privacy budget** spent and left in the period (``node_agent.budget``), in epsilon;
- the **decision-quality review** in its released form only (``node_agent.quality.released_review``:
  counts below ``min_n`` suppressed, the others rounded); a suppressed count is left out, not sent.

The period is the site's DP period (``dp.period_days``). The node audit log's head goes with the
reply's ``site`` record, as with every reply. A part that cannot be read now (the store locked by
another process for more than ``BUSY_SECONDS``) is left out of the report rather than hold the reply up.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from models.errors import FenjiError
from node_agent.budget import node_audit, spent
from node_agent.egress import QUARANTINE_EDGES, ROW_EDGES
from node_agent.policy import SitePolicy, load_site_policy
from node_agent.quality import COUNTS, RATES, released_review
from node_agent.store import DB_NAME, SiteStore

__all__ = ["bucket", "site_report"]

log = logging.getLogger("fenji.node")
BUSY_SECONDS = 2.0


def bucket(value: float, edges: Sequence[float], *, floor: float = 0.0) -> tuple[float, float | None]:
    """The ``[from, to)`` edges of the bucket holding ``value`` (``to`` None above the last edge); the
    edges below ``floor`` are dropped, so every value under it shares the first bucket."""
    kept = [edges[0], *(e for e in edges[1:] if e >= floor)]
    lower = max(e for e in kept if e <= value)
    upper = next((e for e in kept if e > value), None)
    return float(lower), None if upper is None else float(upper)


def _rows(site_dir: Path, task: str, policy: SitePolicy) -> dict[str, float]:
    if not (Path(site_dir) / DB_NAME).exists():
        return {}
    with SiteStore(site_dir, read_only=True) as store:
        (rows,) = store.connection.execute(
            "SELECT coalesce(sum(accepted), 0) FROM ingest_log WHERE task = ?", [task]).fetchone()
        summary = store.summary(task)
    # A row count the bucket edges would pin below min_n shares the first bucket with every smaller one.
    low, high = bucket(float(rows), ROW_EDGES, floor=policy.min_n)
    report = {"rows-from": low} | ({"rows-to": high} if high is not None else {})
    read, quarantined = float(summary["rows_read"].sum()), float(summary["quarantined"].sum())
    if read >= policy.min_n:
        low, high = bucket(quarantined / read, QUARANTINE_EDGES[:-1])
        report |= {"quarantine-from": low, "quarantine-to": QUARANTINE_EDGES[-1] if high is None else high}
    return report


def _decisions(site_dir: Path, policy: SitePolicy, since: datetime) -> dict[str, float]:
    runs: dict[str, set[str]] = {"job-accepted": set(), "job-refused": set()}
    for entry in node_audit(site_dir).entries():
        if entry["action"] in runs and datetime.fromisoformat(entry["at"]) >= since:
            runs[entry["action"]].add(str(entry["details"].get("run_id", "")))
    return {"plans-approved": float(len(policy.approved_plans)), "runs-accepted": float(len(runs["job-accepted"])),
            "runs-refused": float(len(runs["job-refused"]))}


def _budget(site_dir: Path, policy: SitePolicy) -> dict[str, float]:
    used = spent(site_dir, period_days=policy.dp.period_days, busy_timeout=BUSY_SECONDS)
    return {"dp-spent": used, "dp-left": max(0.0, policy.dp.budget_epsilon - used),
            "dp-budget": policy.dp.budget_epsilon}


def _quality(site_dir: Path, since: datetime) -> dict[str, float]:
    released = released_review(site_dir, since=since)
    return {f"quality-{name.replace('_', '-')}": float(released[name]) for name in (*COUNTS, *RATES)
            if released[name] is not None}


def site_report(site_dir: Path, task: str, *, now: datetime | None = None) -> dict[str, float]:
    """The report of the site at ``site_dir`` for a run of ``task`` (numbers only; module docstring)."""
    policy = load_site_policy(site_dir)
    since = (now or datetime.now(timezone.utc)) - timedelta(days=policy.dp.period_days)
    report: dict[str, float] = {"period-days": float(policy.dp.period_days)}
    parts = [("rows", lambda: _rows(site_dir, task, policy)), ("decisions", lambda: _decisions(site_dir, policy, since)),
             ("budget", lambda: _budget(site_dir, policy)), ("quality", lambda: _quality(site_dir, since))]
    for name, part in parts:
        try:
            report |= part()
        except (FenjiError, duckdb.Error, OSError, ValueError, KeyError) as exc:
            log.warning("site report: %s left out (%s)", name, exc)
    return {k: v for k, v in report.items() if math.isfinite(v)}
