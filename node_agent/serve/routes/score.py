"""POST /score and /score/batch: the advisor's assessment of one or many patients."""

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ValidationError

from models.assessment import Assessment
from node_agent.serve.advisor import Advisor
from node_agent.serve.deps import CurrentAdvisor, api_router
from node_agent.serve.errors import ERROR_RESPONSES, AdvisorFailed, ErrorBody, PayloadTooLarge
from node_agent.serve.inputs import Inputs
from node_agent.serve.schemas import ScoreResult


def card_url(task: str, version: str) -> str:
    return f"/api/v1/model/{quote(task, safe='')}/card?version={quote(version, safe='')}"


def assess(advisor: Advisor, patients: list[BaseModel]) -> list[ScoreResult]:
    """Score validated patients; a feature absent or null goes to the advisor as None (not recorded)."""
    records: list[dict[str, Any]] = [p.model_dump() for p in patients]
    try:
        answers = advisor.assess(records)
    except Exception as exc:  # the advisor's own failure, whatever it is, is not the caller's fault
        raise AdvisorFailed("the advisor could not score this request; the node agent's log has the cause") from exc
    if len(answers) != len(records):
        raise AdvisorFailed(f"the advisor answered {len(answers)} times for {len(records)} patients")
    results = []
    for record, answer in zip(records, answers):
        try:
            data = Assessment.model_validate(answer, from_attributes=True).model_dump()
        except ValidationError as exc:
            raise AdvisorFailed("the advisor gave a malformed assessment") from exc
        data["models"] = {task: {**ref, "card_url": card_url(task, ref["version"])}
                          for task, ref in data["models"].items()}
        results.append(ScoreResult(**data, not_recorded=[name for name, value in record.items() if value is None]))
    return results


def router(inputs: Inputs, *, max_batch: int) -> APIRouter:
    api = api_router(tags=["score"], responses=ERROR_RESPONSES)
    spec_examples = inputs.patient.model_config["json_schema_extra"]["examples"]  # type: ignore[index]
    Patient, Batch = inputs.patient, inputs.batch

    async def batch_limit(request: Request) -> None:
        """Refuse an oversized batch before validating a single patient of it."""
        try:
            body = await request.json()
        except ValueError:
            return  # malformed JSON: body validation answers 422
        patients = body.get("patients") if isinstance(body, dict) else None
        if isinstance(patients, list) and len(patients) > max_batch:
            raise PayloadTooLarge(f"a batch holds at most {max_batch} patients; this one has {len(patients)}: "
                                  "split it into several calls")

    @api.post(
        "/score", response_model=ScoreResult, summary="Score one patient",
        description="Triage level, referral risk, recommended tier, likely diagnoses and the features that "
        "pushed the risk, for one first visit. Features left out or null are **not recorded** and are "
        "scored as missing (listed in `not_recorded`), never filled with a typical value.",
    )
    def score(
        patient: Annotated[Patient, Body(openapi_examples={  # type: ignore[valid-type]
            "complete": {"summary": "all features recorded", "value": spec_examples[0]},
            "minimal": {"summary": "only the required features", "value": spec_examples[1]}})],
        advisor: CurrentAdvisor,
    ) -> ScoreResult:
        return assess(advisor, [patient])[0]

    @api.post(
        "/score/batch", response_model=list[ScoreResult], summary="Score several patients",
        description=f"Up to {max_batch} patients in one call; the answers come in the same order. An invalid "
        "patient fails the whole call with a 422 naming its index and fields; more than "
        f"{max_batch} patients is a 413.",
        dependencies=[Depends(batch_limit)],
        responses={413: {"model": ErrorBody, "description": f"More than {max_batch} patients"}},
    )
    def score_batch(
        batch: Annotated[Batch, Body(openapi_examples={  # type: ignore[valid-type]
            "two": {"summary": "two patients", "value": {"patients": spec_examples}}})],
        advisor: CurrentAdvisor,
    ) -> list[ScoreResult]:
        return assess(advisor, batch.patients)  # type: ignore[attr-defined]

    return api
