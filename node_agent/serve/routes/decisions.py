"""The doctor's decision for a scored visit, and its outcome later: labelled data for training."""

from typing import Annotated

from fastapi import APIRouter, Body, Query, status

from node_agent.serve.deps import Caller, Records, api_router
from node_agent.serve.errors import ERROR_RESPONSES, ErrorBody
from node_agent.serve.inputs import DecisionQuery, Inputs
from node_agent.serve.schemas import DecisionPublic, OutcomePublic

_STORE_BUSY = {503: {"model": ErrorBody, "description": "The site's DuckDB file is busy; try again"}}


def router(inputs: Inputs, example: dict) -> APIRouter:
    api = api_router(tags=["decisions"], responses={**ERROR_RESPONSES, **_STORE_BUSY})
    Decision, Outcome = inputs.decision, inputs.outcome
    decision_example = {
        "encounter_id": "MZ20250312-0042", "inputs": example,
        "assessment": {"models": {"referral_risk": {"name": "referral_risk", "version": "3"}},
                       "referral_risk": 0.42, "tier": "county", "triage_level": "3"},
        "decision": "refer", "referred_tier": "county", "note": "胸痛持续，建议县医院进一步检查"}
    outcome_example = {"decision_id": "<decision_id>", **{
        name: label.classes[-1] for name, label in inputs.labels.items()}}

    @api.post("/decisions", response_model=DecisionPublic, status_code=status.HTTP_201_CREATED,
              summary="Record the doctor's decision",
              description="What the doctor decided for a scored visit: treat here, or refer to the county or a "
              "tertiary hospital (`referred_tier` required iff `refer`), with the inputs and the model versions "
              "and answer they were shown. Stored in the clinic's own DuckDB file only.")
    def record_decision(
        decision: Annotated[Decision, Body(openapi_examples={  # type: ignore[valid-type]
            "refer": {"summary": "refer to the county hospital", "value": decision_example}})],
        caller: Caller, records: Records,
    ) -> DecisionPublic:
        return records.record_decision(decision, recorded_by=f"{caller.name} ({caller.token_id})")

    @api.get("/decisions", response_model=list[DecisionPublic], summary="List recorded decisions",
             description="The latest decisions first, each with the outcomes recorded for it.")
    def list_decisions(records: Records, query: Annotated[DecisionQuery, Query()]) -> list[DecisionPublic]:
        return records.decisions(limit=query.limit, encounter_id=query.encounter_id)

    @api.get("/decisions/pending", response_model=list[DecisionPublic], summary="Decisions waiting for an outcome",
             description="Decisions with no outcome recorded yet, the latest first: the workstation page's list of "
             "visits to follow up (record each with POST /api/v1/outcomes).")
    def pending_decisions(records: Records, query: Annotated[DecisionQuery, Query()]) -> list[DecisionPublic]:
        return records.decisions(limit=query.limit, encounter_id=query.encounter_id, pending=True)

    @api.post("/outcomes", response_model=OutcomePublic, status_code=status.HTTP_201_CREATED,
              summary="Record the outcome of a decision",
              description="What happened later (needed a higher tier, confirmed triage level, final diagnosis "
              "group), for a recorded decision. Give at least one. The visit then becomes labelled data for the "
              "clinic's future local training.",
              responses={404: {"model": ErrorBody, "description": "No such decision at this site"}})
    def record_outcome(
        outcome: Annotated[Outcome, Body(openapi_examples={  # type: ignore[valid-type]
            "referred": {"summary": "outcome of a referral", "value": outcome_example}})],
        caller: Caller, records: Records,
    ) -> OutcomePublic:
        return records.record_outcome(outcome, recorded_by=f"{caller.name} ({caller.token_id})")

    return api
