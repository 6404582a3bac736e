"""Referrals and their slips, alerts on a scored visit, and the outcome form: the clinic's side of the loop.

Everything here reads and writes the clinic's own ``site.duckdb``; the referral slip is rendered by the
page from ``GET /referrals/{decision_id}`` and printed, so no record leaves the clinic through Fenji.
"""

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field, create_model

from models.policy import TierPolicy, load_policy
from node_agent.serve.deps import Caller, CurrentAdvisor, api_router
from node_agent.serve.errors import ERROR_RESPONSES, ErrorBody
from node_agent.serve.inputs import Inputs
from node_agent.serve.referrals import (
    ReferralCreate,
    ReferralLog,
    ReferralPublic,
    ReferralQuery,
    StatusChange,
)
from node_agent.serve.syndromes import Alert, evaluate

__all__ = ["router"]

_RESPONSES = {**ERROR_RESPONSES,
              404: {"model": ErrorBody, "description": "No such decision or referral at this site"},
              409: {"model": ErrorBody, "description": "Not a referral, already referred, or a status it cannot take"},
              503: {"model": ErrorBody, "description": "The site's DuckDB file is busy; try again"}}
DecisionId = Annotated[str, Path(max_length=64, description="the decision's id, as POST /api/v1/decisions returned")]


async def _referrals(request: Request) -> ReferralLog:
    return ReferralLog(request.app.state.records)


Referrals = Annotated[ReferralLog, Depends(_referrals)]


@functools.cache
def _default_policy() -> TierPolicy:
    return load_policy()


def policy_of(advisor: object) -> TierPolicy:
    """The tier policy the served advisor applies (``models.advisor.Advisor.policy``); the built-in
    default for an advisor that does not say (a test double)."""
    policy = getattr(advisor, "policy", None)
    return policy if isinstance(policy, TierPolicy) else _default_policy()


class OutcomeClass(BaseModel):
    value: str
    display: dict[str, str]


class OutcomeLabel(BaseModel):
    name: str = Field(description="a field of POST /api/v1/outcomes")
    description: str | None = None
    classes: list[OutcomeClass]


def router(inputs: Inputs) -> APIRouter:
    api = api_router(tags=["referrals"], responses=_RESPONSES)
    AlertQuery = create_model(
        "AlertQuery", __config__=ConfigDict(extra="forbid"),
        __doc__="A scored visit: its inputs, and the answer's triage level and referral risk.",
        inputs=(inputs.patient, ...), triage_level=(str, Field(max_length=8, pattern=r"^[1-5]$")),
        referral_risk=(float, Field(ge=0, le=1, allow_inf_nan=False)))

    labels = [OutcomeLabel(name=name, description=label.description, classes=[
        OutcomeClass(value=c, display=(label.class_display or {}).get(c) or {"en": c}) for c in label.classes])
        for name, label in inputs.labels.items()]

    @api.get("/schema/outcomes", response_model=list[OutcomeLabel], summary="The outcome form",
             description="The outcomes POST /api/v1/outcomes takes, each with its classes' names in zh and en.")
    def outcome_form() -> list[OutcomeLabel]:
        return labels

    @api.post("/alerts", response_model=list[Alert], summary="Alerts on a scored visit",
              description="Critical (triage level 1-2, or a referral risk at or above the tier policy's "
              "`critical_risk`) and infectious risk (a complaint + fever pattern of the syndrome table, "
              "`node_agent.serve.syndromes`), each with its reason. Nothing is stored.")
    def alerts(query: Annotated[AlertQuery, Body()]  # type: ignore[valid-type]
               , advisor: CurrentAdvisor) -> list[Alert]:
        record: dict[str, Any] = query.inputs.model_dump()  # type: ignore[attr-defined]
        return evaluate(record, query.triage_level, query.referral_risk,  # type: ignore[attr-defined]
                        policy_of(advisor))

    @api.post("/referrals", response_model=ReferralPublic, status_code=status.HTTP_201_CREATED,
              summary="Open a referral for a decision to refer",
              description="Status `referred`, with what the slip prints besides the decision: the doctor's reason, "
              "the top diagnoses and the tier's reason as shown.")
    def create(body: ReferralCreate, caller: Caller, referrals: Referrals, advisor: CurrentAdvisor) -> ReferralPublic:
        return _with_alerts(referrals.create(body, by=_who(caller)), advisor)

    @api.get("/referrals", response_model=list[ReferralPublic], summary="List referrals",
             description="Latest change first; `status=referred_back` is the follow-up list (下转随访).")
    def find(query: Annotated[ReferralQuery, Query()], referrals: Referrals, advisor: CurrentAdvisor
             ) -> list[ReferralPublic]:
        return [_with_alerts(r, advisor) for r in referrals.find(status=query.status, limit=query.limit)]

    @api.get("/referrals/{decision_id}", response_model=ReferralPublic, summary="One referral (its slip)",
             description="Everything the referral slip (转诊单) prints, and the referral's status history.")
    def get(decision_id: DecisionId, referrals: Referrals, advisor: CurrentAdvisor) -> ReferralPublic:
        return _with_alerts(referrals.get(decision_id), advisor)

    @api.post("/referrals/{decision_id}/status", response_model=ReferralPublic, summary="Change a referral's status",
              description="referred -> received -> referred_back (下转, needs a follow-up `plan`) -> closed; "
              "referred -> cancelled. Any other change is a 409.")
    def change_status(decision_id: DecisionId, change: StatusChange, caller: Caller, referrals: Referrals,
                      advisor: CurrentAdvisor) -> ReferralPublic:
        return _with_alerts(referrals.change_status(decision_id, change, by=_who(caller)), advisor)

    return api


def _who(caller: Caller) -> str:
    return f"{caller.name} ({caller.token_id})"


def _with_alerts(referral: ReferralPublic, advisor: object) -> ReferralPublic:
    referral.alerts = evaluate(referral.inputs, referral.triage_level, referral.referral_risk, policy_of(advisor))
    return referral
