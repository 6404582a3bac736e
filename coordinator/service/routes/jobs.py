"""``/jobs``: training jobs submitted, listed, followed round by round and cancelled (each change audited)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from sqlalchemy import select

from coordinator.service import jobs
from coordinator.service.chain import anchor_head
from coordinator.service.db import Job
from coordinator.service.deps import Caller, CoordinatorDep, Db, api_router
from coordinator.service.errors import ErrorBody, NotFound, Unprocessable
from coordinator.service.schemas import JobCreate, JobPublic
from models.spec import builtin_tasks

router = api_router("/jobs", tags=["jobs"])
JobId = Annotated[int, Path(ge=1, le=2_147_483_647)]
_NO_JOB = {404: {"model": ErrorBody, "description": "No such job"}}


@router.post("", status_code=201, summary="Queue a training job; it runs when the jobs before it have ended",
             description="On Flower's deployment engine a job with a `dp_epsilon` is refused with 422 (`\"error\": "
                         "\"Unprocessable\"`): each site's own DP policy sets its noise there (docs/deployment.md).",
             responses={404: {"model": ErrorBody, "description": "No such built-in task"}})
def submit_job(body: JobCreate, caller: Caller, session: Db, coordinator: CoordinatorDep) -> JobPublic:
    if body.task not in builtin_tasks():
        raise NotFound(f"no built-in task {body.task!r} (tasks: {', '.join(builtin_tasks())})")
    # Refused rather than accepted and dropped: a job record carrying an epsilon nobody applied would
    # read, in the jobs list and the audit chain, as if the model had been trained with it.
    if body.dp_epsilon is not None and (refusal := jobs.dp_epsilon_refusal(coordinator.jobs.runner)):
        raise Unprocessable(refusal)
    job = jobs.submit(session, caller, task=body.task, rounds=body.rounds, dp_epsilon=body.dp_epsilon,
                      personalisation=body.personalisation)
    anchor_head(coordinator.sessions, coordinator.anchors)
    coordinator.jobs.wake()
    return JobPublic.of(job)


@router.get("", summary="Jobs, newest first")
def list_jobs(session: Db, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[JobPublic]:
    return [JobPublic.of(j) for j in session.execute(select(Job).order_by(Job.id.desc()).limit(limit)).scalars()]


@router.get("/{job_id}", responses=_NO_JOB, summary="A job: its state, progress, per-round metrics and outcome")
def get_job(job_id: JobId, session: Db) -> JobPublic:
    return JobPublic.of(jobs.get(session, job_id))


@router.post("/{job_id}/cancel", summary="Cancel a queued job now, or a running one after its current round",
             description="A data scientist cancels only the jobs they submitted (403 otherwise); commissioners "
                         "and coordinator admins any job.",
             responses=_NO_JOB | {409: {"model": ErrorBody, "description": "The job has ended already"}})
def cancel_job(job_id: JobId, caller: Caller, session: Db, coordinator: CoordinatorDep) -> JobPublic:
    job = jobs.cancel(session, caller, job_id)
    anchor_head(coordinator.sessions, coordinator.anchors)
    coordinator.jobs.wake()
    return JobPublic.of(job)
