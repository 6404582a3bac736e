"""Two-way referral (双向转诊) at the clinic: a referral's status, kept next to its decision in ``site.duckdb``.

A referral is a recorded decision to refer, plus what its slip (转诊单) shows that the decision does not
keep (the doctor's reason, the top diagnoses and the tier's reason), and a status the clinic tracks:
``referred`` (上转) -> ``received`` (上级已接收) -> ``referred_back`` (下转, with a follow-up plan) ->
``closed``; a referral not taken up may be ``cancelled``. Every change is kept in ``referral_events``.
Nothing here leaves the clinic: the slip is printed and goes with the patient.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from models.assessment import TIERS, ModelRef
from models.errors import TaskSpecError
from models.spec import load_task
from node_agent.serve.errors import Conflict, NotFound
from node_agent.serve.records import DecisionLog
from node_agent.serve.schemas import UTCDateTime
from node_agent.serve.syndromes import Alert

__all__ = ["NEXT_STATUS", "DiagnosisShown", "ReferralCreate", "ReferralEvent", "ReferralLog", "ReferralPublic",
           "ReferralQuery", "Status", "StatusChange"]

Status = Literal["referred", "received", "referred_back", "closed", "cancelled"]
NEXT_STATUS: dict[str, frozenset[str]] = {  # the hospital may send a patient back without a separate "received"
    "referred": frozenset({"received", "referred_back", "cancelled"}),
    "received": frozenset({"referred_back", "closed"}),
    "referred_back": frozenset({"closed"}),
    "closed": frozenset(), "cancelled": frozenset(),
}
Text = dict[str, str]

_TABLES = """
CREATE TABLE IF NOT EXISTS referrals (
    decision_id VARCHAR PRIMARY KEY, created_at TIMESTAMP NOT NULL, created_by VARCHAR NOT NULL, reason VARCHAR,
    tier_reason VARCHAR NOT NULL, diagnoses VARCHAR NOT NULL,
    status VARCHAR NOT NULL CHECK (status IN ('referred', 'received', 'referred_back', 'closed', 'cancelled')),
    plan VARCHAR, updated_at TIMESTAMP NOT NULL, updated_by VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS referral_events (
    decision_id VARCHAR NOT NULL, changed_at TIMESTAMP NOT NULL, changed_by VARCHAR NOT NULL, status VARCHAR NOT NULL,
    plan VARCHAR, note VARCHAR);
"""
_SHORT = {"max_length": 2000}


class DiagnosisShown(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(max_length=16, pattern=r"^[\w.-]+$", description="a diagnosis class, e.g. 'I00-I99'")
    probability: float = Field(ge=0, le=1, allow_inf_nan=False)
    title: Text | None = Field(None, description="filled in by the server from the diagnosis task")


class ReferralCreate(BaseModel):
    """What the slip needs beyond the recorded decision: as the doctor saw it when referring."""

    model_config = ConfigDict(extra="forbid")

    decision_id: str = Field(min_length=1, max_length=64, description="a recorded decision to refer")
    reason: str | None = Field(None, description="the doctor's reason for referring (转诊原因)", **_SHORT)
    diagnoses: list[DiagnosisShown] = Field(default_factory=list, max_length=3, description="top diagnoses shown")
    tier_reason: dict[Literal["zh", "en"], str] = Field(default_factory=dict, description="why that tier, as shown")


class StatusChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Status
    plan: str | None = Field(None, description="follow-up plan (随访计划); required for referred_back", **_SHORT)
    note: str | None = Field(None, **_SHORT)

    @model_validator(mode="after")
    def _plan_for_follow_up(self) -> StatusChange:
        if self.status == "referred_back" and not (self.plan or "").strip():
            raise PydanticCustomError("plan_required", "a patient referred back (下转) needs a follow-up plan")
        return self


class ReferralQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Status | None = Field(None, description="only referrals in this status (referred_back: follow-up list)")
    limit: int = Field(100, ge=1, le=1000, description="at most this many, latest change first")


class ReferralEvent(BaseModel):
    status: Status
    at: UTCDateTime
    by: str
    plan: str | None = None
    note: str | None = None


class ReferralPublic(BaseModel):
    """A referral with everything its slip prints: first-visit data, assessment, reason, receiving tier."""

    decision_id: str
    encounter_id: str
    decided_at: UTCDateTime
    referred_by: str
    inputs: dict[str, Any]
    models: dict[str, ModelRef]
    triage_level: str
    triage_title: Text
    referral_risk: float
    recommended_tier: str
    recommended_title: Text
    tier_reason: Text
    receiving_tier: Literal["county", "tertiary"]
    receiving_title: Text
    reason: str | None = None
    diagnoses: list[DiagnosisShown]
    status: Status
    plan: str | None = None
    updated_at: UTCDateTime
    history: list[ReferralEvent]
    alerts: list[Alert] = Field(default_factory=list, description="alerts on this visit (node_agent.serve.syndromes)")


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # naive UTC, as the TIMESTAMP columns keep it


@functools.cache
def _class_display(task: str) -> dict[str, Text]:
    try:
        return dict(load_task(task).label.class_display or {})
    except TaskSpecError:
        return {}


class ReferralLog:
    """The ``referrals`` and ``referral_events`` tables, opened through the site's ``DecisionLog`` (one
    writer at a time, waiting for local training like every write to ``site.duckdb``)."""

    def __init__(self, records: DecisionLog) -> None:
        self.records = records

    def _connection(self):
        return self.records._connection()

    def create(self, body: ReferralCreate, *, by: str) -> ReferralPublic:
        now = _now()
        with self._connection() as con:
            con.execute(_TABLES)
            decision = con.execute("SELECT decision FROM decisions WHERE decision_id = ?", [body.decision_id]).fetchone()
            if decision is None:
                raise NotFound(f"no decision with id {body.decision_id!r} at this site")
            if decision[0] != "refer":
                raise Conflict(f"decision {body.decision_id!r} is not a referral (treat here)")
            if con.execute("SELECT count(*) FROM referrals WHERE decision_id = ?", [body.decision_id]).fetchone()[0]:
                raise Conflict(f"decision {body.decision_id!r} already has a referral")
            diagnoses = [d.model_dump(exclude={"title"}) for d in body.diagnoses]
            con.execute("INSERT INTO referrals VALUES (?, ?, ?, ?, ?, ?, 'referred', NULL, ?, ?)",
                        [body.decision_id, now, by, body.reason, json.dumps(body.tier_reason, ensure_ascii=False),
                         json.dumps(diagnoses), now, by])
            con.execute("INSERT INTO referral_events VALUES (?, ?, ?, 'referred', NULL, NULL)",
                        [body.decision_id, now, by])
        return self.get(body.decision_id)

    def change_status(self, decision_id: str, change: StatusChange, *, by: str) -> ReferralPublic:
        now = _now()
        with self._connection() as con:
            con.execute(_TABLES)
            row = con.execute("SELECT status FROM referrals WHERE decision_id = ?", [decision_id]).fetchone()
            if row is None:
                raise NotFound(f"no referral for decision {decision_id!r} at this site")
            if change.status not in NEXT_STATUS[row[0]]:
                allowed = ", ".join(sorted(NEXT_STATUS[row[0]])) or "none"
                raise Conflict(f"a referral in status {row[0]!r} cannot become {change.status!r} (allowed: {allowed})")
            con.execute("UPDATE referrals SET status = ?, plan = coalesce(?, plan), updated_at = ?, updated_by = ? "
                        "WHERE decision_id = ?", [change.status, change.plan, now, by, decision_id])
            con.execute("INSERT INTO referral_events VALUES (?, ?, ?, ?, ?, ?)",
                        [decision_id, now, by, change.status, change.plan, change.note])
        return self.get(decision_id)

    def get(self, decision_id: str) -> ReferralPublic:
        found = self.find(decision_id=decision_id)
        if not found:
            raise NotFound(f"no referral for decision {decision_id!r} at this site")
        return found[0]

    def find(self, *, status: str | None = None, limit: int = 100, decision_id: str | None = None
             ) -> list[ReferralPublic]:
        """Referrals joined with their decisions, the latest change first."""
        where, params = [], []
        if status is not None:
            where, params = [*where, "r.status = ?"], [*params, status]
        if decision_id is not None:
            where, params = [*where, "r.decision_id = ?"], [*params, decision_id]
        sql = ("SELECT d.*, r.reason, r.tier_reason, r.diagnoses, r.status, r.plan, r.updated_at "
               "FROM referrals r JOIN decisions d USING (decision_id) "
               f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY r.updated_at DESC LIMIT ?")
        with self._connection() as con:
            con.execute(_TABLES)
            cursor = con.execute(sql, [*params, limit])
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, r)) for r in cursor.fetchall()]
            events = con.execute("SELECT decision_id, status, changed_at, changed_by, plan, note FROM referral_events "
                                 "WHERE list_contains(?, decision_id) ORDER BY changed_at",
                                 [[r["decision_id"] for r in rows]]).fetchall()
        history: dict[str, list[ReferralEvent]] = {}
        for decision_id_, status_, at, by, plan, note in events:
            history.setdefault(decision_id_, []).append(ReferralEvent(status=status_, at=at, by=by, plan=plan, note=note))
        return [self._public(r, history.get(r["decision_id"], [])) for r in rows]

    @staticmethod
    def _public(r: dict[str, Any], history: list[ReferralEvent]) -> ReferralPublic:
        dx_titles = _class_display("diagnosis")
        diagnoses = [DiagnosisShown(**d, title=dx_titles.get(d["code"]) or {"zh": d["code"], "en": d["code"]})
                     for d in json.loads(r["diagnoses"])]
        level = r["triage_level"]
        return ReferralPublic(
            decision_id=r["decision_id"], encounter_id=r["encounter_id"], decided_at=r["decided_at"],
            referred_by=r["recorded_by"], inputs=json.loads(r["inputs"]), models=json.loads(r["models"]),
            triage_level=level, triage_title=_class_display("triage").get(level) or {"zh": f"{level} 级", "en": level},
            referral_risk=r["referral_risk"], recommended_tier=r["recommended_tier"],
            recommended_title=TIERS.get(r["recommended_tier"], {"en": r["recommended_tier"]}),
            tier_reason=json.loads(r["tier_reason"]), receiving_tier=r["referred_tier"],
            receiving_title=TIERS[r["referred_tier"]], reason=r["reason"], diagnoses=diagnoses, status=r["status"],
            plan=r["plan"], updated_at=r["updated_at"], history=history)
