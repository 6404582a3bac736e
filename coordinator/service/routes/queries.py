"""``/queries``: federated-statistics queries (``Count``, ``Mean``, ``Histogram``, ``CrossTab``) submitted,
listed, run at the sites by the jobs' worker, read back with their suppressed cells, and cancelled while
queued (each step audited)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Path
from fastapi import Query as Parameter
from pydantic import BaseModel, Field

from coordinator.service import queries
from coordinator.service.chain import anchor_head
from coordinator.service.db import QueryJob
from coordinator.service.deps import Caller, CoordinatorDep, Db, api_router
from coordinator.service.errors import ErrorBody, NotFound
from coordinator.service.schemas import SiteProblem
from federation.analytics import Query, layout
from models.spec import builtin_tasks, load_task

router = api_router("/queries", tags=["queries"])
QueryId = Annotated[int, Path(ge=1, le=2_147_483_647)]
_NO_QUERY = {404: {"model": ErrorBody, "description": "No such statistics query"}}


class QueryCreate(BaseModel):
    task: str = Field(pattern=r"^[a-z][a-z0-9_]{0,99}$", description="A built-in task whose columns are asked about")
    query: Query = Field(description="A typed query: count, mean, histogram or crosstab (federation.analytics)")


class QueryPublic(BaseModel):
    id: int
    task: str
    query: dict[str, Any]
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    submitted_by: str
    submitted_at: str
    started_at: str | None
    finished_at: str | None
    result: dict[str, Any] | None = Field(description="cells (one record per cell, with suppressed_sites), "
                                                      "columns, rows, sites, dp_epsilon, excluded")
    error: str | None
    reason: str | None
    failed_sites: list[SiteProblem] = Field(description="The sites a failed query left out, and why")

    @classmethod
    def of(cls, row: QueryJob) -> QueryPublic:
        left_out = json.loads(row.left_out.sites_json) if row.left_out is not None else []
        return cls(id=row.id, task=row.task, query=json.loads(row.query_json), status=row.status,
                   submitted_by=row.submitted_by, submitted_at=row.submitted_at, started_at=row.started_at,
                   finished_at=row.finished_at, result=json.loads(row.result_json) if row.result_json else None,
                   error=row.error, reason=row.reason, failed_sites=[SiteProblem(**s) for s in left_out])


@router.post("", status_code=201, summary="Queue a statistics query; it runs at the sites when the jobs before it "
             "have ended", responses={404: {"model": ErrorBody, "description": "No such built-in task"}})
def submit_query(body: QueryCreate, caller: Caller, session: Db, coordinator: CoordinatorDep) -> QueryPublic:
    if body.task not in builtin_tasks():
        raise NotFound(f"no built-in task {body.task!r} (tasks: {', '.join(builtin_tasks())})")
    layout(body.query, load_task(body.task))  # a column the task lacks: 422 now, not after a run at the sites
    row = queries.submit(session, caller, task=body.task, query=body.query)
    anchor_head(coordinator.sessions, coordinator.anchors)
    coordinator.jobs.wake()
    return QueryPublic.of(row)


@router.get("", summary="Statistics queries, newest first (everyone's, as the jobs list; not the surveillance runs)")
def list_queries(session: Db, limit: Annotated[int, Parameter(ge=1, le=1000)] = 100) -> list[QueryPublic]:
    # Parameter is FastAPI's Query: here Query is federation.analytics' typed query, as the API names it.
    return [QueryPublic.of(row) for row in queries.latest(session, surveillance=False, limit=limit)]


@router.get("/{query_id}", responses={404: {"model": ErrorBody, "description": "No such query"}},
            summary="A query: its state and, once answered, its cells and at how many sites each was suppressed")
def get_query(query_id: QueryId, session: Db) -> QueryPublic:
    return QueryPublic.of(queries.get(session, query_id))


@router.post("/{query_id}/cancel", summary="Cancel a queued statistics query (a running one cannot be stopped)",
             description="A data scientist cancels only the queries they submitted (403 otherwise); coordinator "
                         "admins any. A query already running at the sites is one short run the worker cannot "
                         "interrupt: 409, and it ends succeeded or failed.",
             responses=_NO_QUERY | {409: {"model": ErrorBody, "description": "The query is running or has ended"}})
def cancel_query(query_id: QueryId, caller: Caller, session: Db, coordinator: CoordinatorDep) -> QueryPublic:
    row = queries.cancel(session, caller, query_id)
    anchor_head(coordinator.sessions, coordinator.anchors)
    return QueryPublic.of(row)
