"""POST /score and /score/batch: the advisor's assessment of one or many patients."""

from collections.abc import Mapping, Sequence
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends, Request
from pydantic import TypeAdapter, ValidationError

from models.assessment import Assessment, ModelRef
from node_agent.serve.advisor import Scorer
from node_agent.serve.batching import MicroBatcher
from node_agent.serve.deps import CurrentAdvisor, api_router
from node_agent.serve.errors import (
    ERROR_RESPONSES,
    AdvisorFailed,
    ErrorBody,
    PayloadTooLarge,
)
from node_agent.serve.inputs import Inputs
from node_agent.serve.schemas import ScoreResult

_RESULTS = TypeAdapter(list[ScoreResult])


def card_url(task: str, version: str) -> str:
    return f"/api/v1/model/{quote(task, safe='')}/card?version={quote(version, safe='')}"


def score_records(advisor: Scorer, records: Sequence[Mapping[str, Any]]) -> list[ScoreResult]:
    """Score validated records (feature -> value, None = not recorded) with ``advisor``."""
    try:
        answers = advisor.assess(list(records))
    except Exception as exc:  # the advisor's own failure, whatever it is, is not the caller's fault
        raise AdvisorFailed("the advisor could not score this request; the node agent's log has the cause") from exc
    if len(answers) != len(records):
        raise AdvisorFailed(f"the advisor answered {len(answers)} times for {len(records)} patients")
    models: dict[tuple, dict[str, ModelRef]] = {}  # the answers' model versions, with their cards' links
    results = []
    for record, answer in zip(records, answers):
        try:
            # An Assessment was validated when it was built; anything else is validated here.
            assessment = answer if isinstance(answer, Assessment) else Assessment.model_validate(
                answer, from_attributes=True)
        except ValidationError as exc:
            raise AdvisorFailed("the advisor gave a malformed assessment") from exc
        key = tuple((task, ref.name, ref.version, ref.personalised, ref.method, ref.base_version)
                    for task, ref in assessment.models.items())
        refs = models.get(key)
        if refs is None:  # a personalised model says so, and which global version it came from
            refs = models[key] = {task: ModelRef(name=name, version=version, card_url=card_url(task, version),
                                                 personalised=personal, method=method, base_version=base)
                                  for task, name, version, personal, method, base in key}
        results.append({**dict(assessment), "models": refs,
                        "not_recorded": [name for name, value in record.items() if value is None]})
    try:
        return _RESULTS.validate_python(results)  # one validation for the batch; the parts are models already
    except ValidationError as exc:
        raise AdvisorFailed("the advisor gave a malformed assessment") from exc


def router(inputs: Inputs, *, max_batch: int) -> APIRouter:
    api = api_router(tags=["score"], responses=ERROR_RESPONSES)
    batcher: MicroBatcher[ScoreResult] = MicroBatcher(score_records)
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
    async def score(
        patient: Annotated[Patient, Body(openapi_examples={  # type: ignore[valid-type]
            "complete": {"summary": "all features recorded", "value": spec_examples[0]},
            "minimal": {"summary": "only the required features", "value": spec_examples[1]}})],
        request: Request,
    ) -> ScoreResult:
        # The advisor is read here rather than through a dependency: on the busiest endpoint, one
        # dependency less is a measurable share of each request (bench/serving.py).
        return await batcher.submit(request.app.state.holder.current, patient.model_dump())

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
        return score_records(advisor, [p.model_dump() for p in batch.patients])  # type: ignore[attr-defined]

    return api
