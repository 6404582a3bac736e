"""The clinics as the coordinator knows them: since when, when each last replied, and its latest report.

The path is the one the per-site metrics take: a run's outcome (``coordinator.server_app``: each
site's report from its statistics reply, the time it last answered, its audit head) goes through the
job's runner into ``JobResult.sightings`` (``sightings_of``), and the job queue writes it here in the
transaction of the job's ``job-succeeded`` entry (``record``), which also records each site's audit head.

- **Enrolled**: known to the coordinator from the first job that named it: a site the engine ran
  with (the simulation's site folders) or one that replied. ``last_seen`` stays empty until it replies.
- **Report**: the numbers the node's egress guard let out (``node_agent.site_report``: rows and
  quarantine rate as buckets, plans approved, runs accepted and refused, privacy budget, the released
  decision-quality review), kept as sent; only finite numbers under short names are stored.

**Who sees what** (``SitePublic.of``): every role sees the sites, when they were last seen, their
bucketed rows and quarantine rates, their decisions and their privacy budget; data scientists plan
their DP jobs and queries against what each site has left, and the budget is the sites' accounting,
not their patients'. The decision-quality review (over- and under-referral at each clinic) is the
commission's review of clinicians' decisions (诊疗合理性评价): only commissioners see it, even in its
suppressed form; for the others it is listed as withheld.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from coordinator.outcome import FederationOutcome
from coordinator.service.accounts import now
from coordinator.service.db import Site
from coordinator.service.errors import NotFound

__all__ = ["QUALITY_ROLES", "Bucket", "Budget", "Sighting", "SitePublic", "SiteReport", "get", "record",
           "sightings_of"]

QUALITY_ROLES = frozenset({"commissioner"})
_KEY = re.compile(r"^[a-z0-9-]{1,40}$")
_MAX_NUMBERS = 64


@dataclass
class Sighting:
    """What one job learnt about one site: when it last replied (None: it did not), its report, its audit head."""

    last_seen: str | None = None
    report: dict[str, float] | None = None
    audit_head: str = ""


def sightings_of(outcome: FederationOutcome, *, enrolled: Iterable[str] = ()) -> dict[str, Sighting]:
    """Each site a run saw (and each of ``enrolled`` it did not) with its report, from the run's outcome."""
    names = set(enrolled) | set(outcome.last_seen) | set(outcome.site_reports)
    return {name: Sighting(last_seen=outcome.last_seen.get(name), report=outcome.site_reports.get(name),
                           audit_head=outcome.site_audit_heads.get(name, "")) for name in sorted(names)}


def _clean(report: Mapping[str, object]) -> dict[str, float]:
    """The report's finite numbers under short names (a node could send anything: keep only those)."""
    kept: dict[str, float] = {}
    for key, value in report.items():
        number = isinstance(value, int | float) and math.isfinite(float(value))
        if len(kept) < _MAX_NUMBERS and isinstance(key, str) and _KEY.match(key) and number:
            kept[key] = float(value)
    return kept


def record(session: Session, sightings: Mapping[str, Sighting], *, job_id: int, task: str) -> None:
    """Create or update each site's row (not committed: the caller commits it with its audit entry)."""
    at = now()
    for name, seen in sightings.items():
        site = session.get(Site, name[:100])
        if site is None:
            site = Site(site_id=name[:100], enrolled_at=at)
            session.add(site)
        if seen.last_seen:
            site.last_seen_at, site.last_job_id = seen.last_seen[:40], job_id
        if seen.audit_head:
            site.audit_head = seen.audit_head[:64]
        if seen.report is not None:
            site.report_json = json.dumps(_clean(seen.report))
            site.report_at, site.report_task, site.report_job_id = at, task[:100], job_id


def get(session: Session, site_id: str) -> Site:
    site = session.get(Site, site_id)
    if site is None:
        raise NotFound(f"no site {site_id!r} has taken part in a job")
    return site


class Bucket(BaseModel):
    low: float = Field(description="the bucket's lower edge (included)")
    high: float | None = Field(description="its upper edge (excluded; null: open-ended)")


class Budget(BaseModel):
    spent: float = Field(description="epsilon spent in the period")
    left: float = Field(description="epsilon left in the period")
    total: float = Field(description="the site's budget per period")
    period_days: int | None


class SiteReport(BaseModel):
    received_at: str
    task: str = Field(description="the run's task: rows and quarantine are that task's")
    job_id: int
    rows: Bucket | None = Field(description="the task's rows at the site, as a bucket")
    quarantine_rate: Bucket | None = Field(description="rows quarantined at ingest / rows read, as a bucket "
                                                       "(null: too few rows read to say)")
    plans_approved: int | None
    runs_accepted: int | None = Field(description="distinct runs the site accepted in the period")
    runs_refused: int | None = Field(description="distinct runs the site refused in the period")
    budget: Budget | None = Field(description="the site's privacy budget in the period")
    quality: dict[str, float] | None = Field(description="the decision-quality review as the site released it "
                                             "(counts below its minimum n absent, others rounded); commissioners only")

    @classmethod
    def of(cls, site: Site, *, quality: bool) -> SiteReport:
        numbers: dict[str, float] = json.loads(site.report_json or "{}")

        def whole(key: str) -> int | None:
            return int(numbers[key]) if key in numbers else None

        def pair(prefix: str) -> Bucket | None:
            return Bucket(low=numbers[f"{prefix}-from"], high=numbers.get(f"{prefix}-to")) \
                if f"{prefix}-from" in numbers else None

        budget = (Budget(spent=numbers["dp-spent"], left=numbers.get("dp-left", 0.0),
                         total=numbers.get("dp-budget", numbers["dp-spent"]), period_days=whole("period-days"))
                  if "dp-spent" in numbers else None)
        released = {k.removeprefix("quality-").replace("-", "_"): v for k, v in numbers.items() if k.startswith("quality-")}
        return cls(received_at=site.report_at or "", task=site.report_task or "", job_id=site.report_job_id or 0,
                   rows=pair("rows"), quarantine_rate=pair("quarantine"), plans_approved=whole("plans-approved"),
                   runs_accepted=whole("runs-accepted"), runs_refused=whole("runs-refused"), budget=budget,
                   quality=(released or None) if quality else None)


class SitePublic(BaseModel):
    site: str
    enrolled_at: str = Field(description="when the coordinator first knew the site (the first job that named it)")
    last_seen: str | None = Field(description="when it last replied to a run (null: not yet)")
    last_job: int | None = Field(description="the job of that reply")
    audit_head: str = Field(description="its node audit log's head as of its last reply")
    report: SiteReport | None = Field(description="the latest report it sent (null: none yet)")
    withheld: list[str] = Field(description="parts of the report the caller's role does not see")

    @classmethod
    def of(cls, site: Site, role: str) -> SitePublic:
        quality = role in QUALITY_ROLES
        return cls(site=site.site_id, enrolled_at=site.enrolled_at, last_seen=site.last_seen_at,
                   last_job=site.last_job_id, audit_head=site.audit_head,
                   report=SiteReport.of(site, quality=quality) if site.report_json is not None else None,
                   withheld=[] if quality else ["quality"])
