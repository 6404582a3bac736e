"""``/surveillance``: syndromic surveillance runs, queued as query jobs (``coordinator.service.queries``)
and answered at the sites by the jobs' worker: each district's daily and weekly syndrome counts from
its clinics' encrypted sum, the clinics' own series where their policy publishes one, EARS C1/C2/C3
on every series and the alerts ranked (``coordinator.surveillance.report``). Each step is audited."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, Field, ValidationError, model_validator

from coordinator.service import queries
from coordinator.service.chain import anchor_head
from coordinator.service.deps import Caller, CoordinatorDep, Db, api_router
from coordinator.service.errors import ErrorBody, NotFound
from coordinator.service.routes.queries import QueryPublic
from federation.surveillance import SyndromeCounts
from models.spec import builtin_tasks

router = api_router("/surveillance", tags=["surveillance"])
RunId = Annotated[int, Path(ge=1, le=2_147_483_647)]
KIND = queries.SURVEILLANCE  # in every stored surveillance query's canonical JSON


class SurveillanceCreate(BaseModel):
    task: str = Field(pattern=r"^[a-z][a-z0-9_]{0,99}$", description="A built-in task whose visits are counted")
    start: date = Field(description="First day counted")
    end: date = Field(description="Last day counted (inclusive); at most 371 days after start")
    syndromes: list[str] | None = Field(None, description="Codes of the syndrome table (default: all of them)")

    @model_validator(mode="after")
    def _a_valid_query(self) -> SurveillanceCreate:
        self.query()  # a window too long, an unknown syndrome: 422 now, not after a run at the sites
        return self

    def query(self) -> SyndromeCounts:
        fields = {"start": self.start, "end": self.end} | ({"syndromes": tuple(self.syndromes)} if self.syndromes else {})
        try:
            return SyndromeCounts(**fields)
        except ValidationError as exc:
            raise ValueError(exc.errors()[0].get("msg", str(exc))) from None


# A surveillance run is the same ``QueryJob`` row as a statistics query, read the same way (``QueryPublic.of``);
# only what its fields hold differs. (A comment, not a docstring: that would change the OpenAPI schema.)
class SurveillancePublic(QueryPublic):
    status: str = Field(description="queued, running, succeeded or failed")
    result: dict[str, Any] | None = Field(description="series (per district and published clinic, daily and weekly, "
                                                      "with each detector's alarms), alerts ranked, districts, "
                                                      "published, unavailable, refused, skipped")


@router.post("", status_code=201, summary="Queue a surveillance run: each district's syndrome counts per day, "
             "from its clinics' encrypted sum", responses={404: {"model": ErrorBody, "description": "No such task"}})
def submit_surveillance(body: SurveillanceCreate, caller: Caller, session: Db, coordinator: CoordinatorDep
                        ) -> SurveillancePublic:
    if body.task not in builtin_tasks():
        raise NotFound(f"no built-in task {body.task!r} (tasks: {', '.join(builtin_tasks())})")
    row = queries.submit(session, caller, task=body.task, query=body.query())
    anchor_head(coordinator.sessions, coordinator.anchors)
    coordinator.jobs.wake()
    return SurveillancePublic.of(row)


@router.get("", summary="The latest surveillance runs, newest first (the console shows the last one answered)")
def list_surveillance(session: Db, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> list[SurveillancePublic]:
    return [SurveillancePublic.of(row) for row in queries.latest(session, surveillance=True, limit=limit)]


@router.get("/{run_id}", responses={404: {"model": ErrorBody, "description": "No such surveillance run"}},
            summary="One surveillance run: its state and, once answered, its series and ranked alerts")
def get_surveillance(run_id: RunId, session: Db) -> SurveillancePublic:
    row = queries.get(session, run_id)
    if KIND not in row.query_json:
        raise NotFound(f"query {run_id} is a statistics query, not a surveillance run (see /queries/{run_id})")
    return SurveillancePublic.of(row)
