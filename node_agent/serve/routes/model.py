"""GET /model and /model/{task}/card: which model versions answer, and their model cards."""

from typing import Annotated

from fastapi import Path, Query, Request
from fastapi.responses import Response

from node_agent.serve.advisor import features_read
from node_agent.serve.deps import CurrentAdvisor, api_router
from node_agent.serve.errors import ERROR_RESPONSES, AdvisorFailed, ErrorBody, NotFound
from node_agent.serve.inputs import CardQuery
from node_agent.serve.schemas import ModelInfo

router = api_router(tags=["model"], responses=ERROR_RESPONSES)


@router.get("/model", response_model=ModelInfo, summary="Model versions in use",
            description="The task whose features the API reads, and for each task the model version answering it "
            "and the features that model reads.")
def model_info(advisor: CurrentAdvisor, request: Request) -> ModelInfo:
    return ModelInfo(task=advisor.spec.name, models=advisor.models, features=features_read(advisor),
                     personalisation=getattr(request.app.state, "personalisation", {}))


@router.get(
    "/model/{task}/card", response_class=Response, summary="Model card",
    description="The markdown model card of the model version answering `task` (each Assessment links to it), "
    "in `lang` (zh-CN by default, or en). With `version`, a 404 says that version is no longer the one in use.",
    responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}}, "description": "The model card"},
               404: {"model": ErrorBody, "description": "Unknown task, or a version no longer in use"}},
)
def model_card(
    advisor: CurrentAdvisor,
    task: Annotated[str, Path(max_length=64, description="a task in GET /api/v1/model, e.g. referral_risk")],
    query: Annotated[CardQuery, Query()],
) -> Response:
    ref = advisor.models.get(task)
    if ref is None:
        raise NotFound(f"no model for task {task!r}; tasks: {', '.join(sorted(advisor.models))}")
    if query.version is not None and query.version != ref.version:
        raise NotFound(f"{task} version {query.version!r} is no longer in use (now {ref.version!r})")
    try:
        card = advisor.model_card(task, query.lang)
    except Exception as exc:
        raise AdvisorFailed(f"the model card of {task} could not be read") from exc
    return Response(card, media_type="text/markdown; charset=utf-8")
