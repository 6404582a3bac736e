"""Training jobs: submitted through the API, queued in the database, run one at a time on Flower by a
worker thread, through a ``JobRunner`` the shell injects (the coordinator does not know which engine:
``fenji.jobs_runner`` runs the simulation engine over local site folders).

States::

    queued ──> running ──> succeeded
       │          ├──────> failed      (reason; the sites that refused or failed, when the runner says)
       └──────────┴──────> cancelled

- Submitting, starting, finishing, failing and cancelling are each written in one transaction with
  their audit entry (``coordinator.service.chain``), then the head is anchored at the key holder.
  Progress (rounds done, each round's metrics) is written as it comes without an entry: it is a
  report, not a decision, and the job's last entry records the rounds done.
- Cancellation: a queued job is cancelled at once. A running job is cancelled *between rounds*: the
  request is stored (and audited), and the runner's round callback raises ``JobCancelled`` after the
  next round completes; the statistics phase before round 1 is not interrupted, and a request that
  arrives after the last round lets the job finish (it then ends ``succeeded``).
- Restart: ``JobQueue.start`` first marks every job left ``running`` failed with the reason
  ``RESTARTED`` (its worker died with the process that ran it), so none is left "running"; queued
  jobs then run. A run the engine itself keeps going (Flower's deployment engine: the SuperLink runs
  it, not this process) is stopped on the way, best effort, by the id the runner reported when it
  started (``JobRequest.on_engine_run``, stored in ``job_engine_runs``); the failure's reason and audit
  entry say whether it stopped. Only the serving process calls ``start``: a command such as ``fenji coordinator
  account add`` opens the same database while a job runs and must not touch it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from coordinator.service import chain, queries
from coordinator.service import sites as known_sites  # "sites" is a parameter name here
from coordinator.service.access import Role
from coordinator.service.accounts import now
from coordinator.service.anchoring import AnchorClient
from coordinator.service.db import Account, EngineRun, Job
from coordinator.service.errors import (
    Conflict,
    Forbidden,
    JobCancelled,
    JobFailed,
    NotFound,
)
from coordinator.service.sites import Sighting
from models.errors import first_line

__all__ = ["FINISHED", "RESTARTED", "WORKER", "JobQueue", "JobRequest", "JobResult", "JobRunner", "RoundCallback",
           "StopsEngineRuns", "cancel", "dp_epsilon_refusal", "submit"]

log = logging.getLogger("fenji.coordinator")
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})
RESTARTED = "coordinator restarted mid-job"
WORKER = "coordinator"  # the audit actor of what the queue does itself
RoundCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class JobRequest:
    """What a runner is asked to run."""

    id: int
    task: str
    rounds: int
    dp_epsilon: float | None = None
    personalisation: bool = True
    # Whom a runner tells the engine's own id of the run, once the engine gives one (Flower's run id
    # on the deployment engine): stored at once, so a restarted coordinator can stop that run.
    on_engine_run: Callable[[str], None] | None = field(default=None, compare=False, repr=False)


@dataclass
class JobResult:
    """What a finished run produced: each site's released metrics, the replies left out on the way
    (each ``{"site", "phase", "round", "reason"}``), and the registered model version if any.
    ``sightings`` (``coordinator.service.sites.sightings_of``) are kept per site, not in the job's result."""

    sites: dict[str, dict[str, float]] = field(default_factory=dict)
    excluded: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    sightings: dict[str, Sighting] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"sites": self.sites, "excluded": self.excluded, "model": self.model, "version": self.version,
                **self.details}


class JobRunner(Protocol):
    """Runs one job to its end. It calls ``on_round(round, metrics)`` after every completed round and
    lets that callback's ``JobCancelled`` end the run; it raises ``JobFailed`` (naming the sites that
    refused or failed) or any other error when the run fails."""

    def __call__(self, request: JobRequest, on_round: RoundCallback) -> JobResult: ...


class StopsEngineRuns(Protocol):
    """A runner whose engine keeps a run going without the coordinator's process (the deployment
    engine): ``stop_run`` stops one by the id it reported, and says in one line how that went.
    A runner may also set ``sends_dp_epsilon = False`` when its engine never applies a job's
    ``dp_epsilon`` (``dp_epsilon_refusal``)."""

    def stop_run(self, run_id: str) -> str: ...


def dp_epsilon_refusal(runner: object | None) -> str | None:
    """Why a job asking for ``dp_epsilon`` is refused on ``runner``'s engine; None if it is not.

    On Flower's deployment engine each site's own DP policy sets its noise (issue #13: DP parameters
    come from the site's policy, never the server's), so a job's epsilon would silently not apply.
    """
    if runner is None or getattr(runner, "sends_dp_epsilon", True):
        return None
    return (f"dp_epsilon is not sent when jobs run on {runner}. Each site's own DP policy sets its noise "
            "there (DP parameters come from the site's policy, never the coordinator's): submit the job without "
            "dp_epsilon; each site's report shows the DP setting and budget it trained with")


def submit(session: Session, account: Account, *, task: str, rounds: int, dp_epsilon: float | None = None,
           personalisation: bool = True) -> Job:
    """Queue a job (audited as ``job-submitted``); committed."""
    job = Job(task=task, rounds=rounds, dp_epsilon=dp_epsilon, personalisation=personalisation, status=QUEUED,
              submitted_by=account.name, submitted_at=now())
    session.add(job)
    session.flush()
    chain.append(session, actor=account.name, action="job-submitted", job_id=job.id, task=task, rounds=rounds,
                 dp_epsilon=dp_epsilon, personalisation=personalisation)
    session.commit()
    return job


def get(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def cancel(session: Session, account: Account, job_id: int) -> Job:
    """Cancel a queued job now, or ask a running one to stop after its current round (audited); committed.

    A data scientist cancels only the jobs they submitted; commissioners and coordinator admins any.

    Raises
    ------
    NotFound
        If there is no such job.
    Forbidden
        If a data scientist asks to cancel someone else's job.
    Conflict
        If it has finished already.
    """
    job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
    if job is None:
        raise NotFound(f"no job {job_id}")
    if account.role == Role.DATA_SCIENTIST.value and job.submitted_by != account.name:
        raise Forbidden(f"job {job_id} was submitted by {job.submitted_by}: a data scientist cancels only their own jobs")
    if job.status in FINISHED:
        raise Conflict(f"job {job_id} has {job.status} already")
    if job.status == QUEUED:
        job.status, job.finished_at, job.reason = CANCELLED, now(), f"cancelled by {account.name} before it started"
        chain.append(session, actor=account.name, action="job-cancelled", job_id=job.id, task=job.task, rounds_done=0)
    elif job.cancel_requested_by is None:
        job.cancel_requested_by = account.name
        chain.append(session, actor=account.name, action="job-cancel-requested", job_id=job.id, task=job.task,
                     rounds_done=job.rounds_done)
    session.commit()
    return job


class JobQueue:
    """The jobs table as a queue, and the one worker thread that runs its jobs in order of submission.

    Parameters
    ----------
    sessions
        The coordinator's database.
    anchors
        The key holder that countersigns the audit head after each change (``None``: not anchored).
    poll_seconds
        How often the idle worker looks for jobs nobody woke it for (e.g. queued before a restart).
    """

    def __init__(self, sessions: sessionmaker, anchors: AnchorClient | None = None, *,
                 poll_seconds: float = 5.0) -> None:
        self.sessions = sessions
        self.anchors = anchors
        self.poll_seconds = poll_seconds
        self.runner: JobRunner | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, runner: JobRunner | None) -> list[int]:
        """Fail the jobs a dead process left running (returns their ids; ``runner`` stops their engine
        runs if it can), then, with a ``runner``, start the worker; without one, jobs wait in the queue
        (no training engine configured)."""
        recovered = self.recover(runner)
        self.runner = runner
        if runner is not None and self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._loop, name="fenji-jobs", daemon=True)
            self._thread.start()
        return recovered

    def stop(self, timeout: float | None = None) -> None:
        """Let the worker end after the job it runs (a test's or a shutdown's; a daemon thread otherwise)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        """Tell the worker a job was queued or cancelled."""
        self._wake.set()

    def recover(self, runner: JobRunner | None = None) -> list[int]:
        """Mark every ``running`` job failed with ``RESTARTED`` (audited, one transaction each); a job
        whose engine run id is stored has that run stopped first by ``runner`` (``StopsEngineRuns``),
        best effort: the reason and the audit entry say how it went."""
        with self.sessions() as session:
            jobs = session.execute(select(Job).where(Job.status == RUNNING).order_by(Job.id)).scalars().all()
            left = [(job.id, job.engine_run.engine if job.engine_run else None,
                     job.engine_run.run_id if job.engine_run else None) for job in jobs]
        for job_id, engine, run_id in left:
            reason, details = RESTARTED, None
            if run_id is not None:
                outcome = _stop_engine_run(runner, engine, run_id)
                reason = f"{RESTARTED}; {engine} run {run_id}: {outcome}"
                details = {"engine": engine, "engine_run_id": run_id, "engine_run_stop": outcome}
            self._finish(job_id, FAILED, "job-failed", error="CoordinatorRestarted", reason=reason, details=details)
            log.warning("job %s was running when the coordinator stopped: marked failed (%s)", job_id, reason)
        queries.recover(self, reason=RESTARTED)
        return [job_id for job_id, _, _ in left]

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before looking: a job queued while we look wakes the wait below
            try:
                ran = self.run_next() or self.run_next_query()
            except Exception:  # the worker must outlive one job's bookkeeping failure
                log.exception("the job worker could not record a job; it goes on with the next")
                ran = True
            if not ran:
                self._wake.wait(self.poll_seconds)

    def run_next_query(self) -> bool:
        """Answer the oldest queued statistics query (``coordinator.service.queries``); False if none."""
        return queries.run_next(self)

    def _claim(self) -> JobRequest | None:
        """The oldest queued job, marked running (audited as ``job-started``); None if none is queued."""
        with self.sessions() as session:
            job = session.execute(select(Job).where(Job.status == QUEUED).order_by(Job.id).limit(1)
                                  .with_for_update()).scalar_one_or_none()
            if job is None:
                return None
            job.status, job.started_at = RUNNING, now()
            chain.append(session, actor=WORKER, action="job-started", job_id=job.id, task=job.task, rounds=job.rounds)
            session.commit()
            request = JobRequest(id=job.id, task=job.task, rounds=job.rounds, dp_epsilon=job.dp_epsilon,
                                 personalisation=job.personalisation, on_engine_run=self._engine_run_callback(job.id))
        chain.anchor_head(self.sessions, self.anchors)
        return request

    def _engine_run_callback(self, job_id: int) -> Callable[[str], None]:
        runner = self.runner

        def on_engine_run(run_id: str) -> None:
            engine = str(getattr(runner, "engine_name", "engine"))
            with self.sessions() as session:
                session.merge(EngineRun(job_id=job_id, engine=engine, run_id=str(run_id), started_at=now()))
                session.commit()

        return on_engine_run

    def run_next(self) -> bool:
        """Run the oldest queued job to its end with the runner; False if none was queued (or no runner)."""
        runner = self.runner
        if runner is None:
            return False
        request = self._claim()
        if request is None:
            return False
        try:
            result = runner(request, self._round_callback(request.id))
        except Exception as exc:  # noqa: BLE001 - every way a run ends is recorded, none leaves it "running"
            self._record_failure(request.id, exc)
            return True
        heads = {name: seen.audit_head for name, seen in result.sightings.items() if seen.audit_head}
        self._finish(request.id, SUCCEEDED, "job-succeeded", result=result.to_dict(), sightings=result.sightings,
                     details={"model": result.model, "version": result.version,
                              "excluded": result.excluded, "sites": sorted(result.sites)}
                     | ({"site_audit_heads": heads} if heads else {}))
        return True

    def _round_callback(self, job_id: int) -> RoundCallback:
        def on_round(server_round: int, metrics: dict[str, float]) -> None:
            with self.sessions() as session:
                job = session.get(Job, job_id)
                history = json.loads(job.history_json)
                history.append({k: float(v) for k, v in metrics.items()})
                job.rounds_done, job.history_json = server_round, json.dumps(history)
                cancelled = job.cancel_requested_by
                session.commit()
            if cancelled is not None:
                raise JobCancelled(f"job {job_id} cancelled by {cancelled} after round {server_round}")

        return on_round

    def _record_failure(self, job_id: int, exc: Exception) -> None:
        if _cancelled(exc):
            with self.sessions() as session:
                by = session.get(Job, job_id).cancel_requested_by
            self._finish(job_id, CANCELLED, "job-cancelled", reason=f"cancelled by {by} between rounds")
            return
        if isinstance(exc, JobFailed):
            error, sites = exc.error, exc.sites
        else:
            error, sites = type(exc).__name__, []
            log.error("job %s failed", job_id, exc_info=exc)
        self._finish(job_id, FAILED, "job-failed", error=error, reason=first_line(exc), sites=sites)

    def _finish(self, job_id: int, status: str, action: str, *, error: str | None = None, reason: str | None = None,
                sites: list[dict[str, Any]] | None = None, result: dict[str, Any] | None = None,
                details: dict[str, Any] | None = None, sightings: dict[str, Sighting] | None = None) -> None:
        """Set a running job's final state with its audit entry (and what it learnt of each site), in one
        transaction, then anchor."""
        with self.sessions() as session:
            job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one()
            if sightings:
                known_sites.record(session, sightings, job_id=job_id, task=job.task)
            job.status, job.finished_at, job.error, job.reason = status, now(), error, reason
            job.sites_json = json.dumps(sites or [])
            if result is not None:
                job.result_json = json.dumps(result, default=float)
            entry = {"job_id": job.id, "task": job.task, "rounds_done": job.rounds_done, **(details or {})}
            if error is not None:
                entry |= {"error": error, "reason": reason, "failed_sites": sites or []}
            elif reason is not None:
                entry["reason"] = reason
            chain.append(session, actor=WORKER, action=action, **entry)
            session.commit()
        chain.anchor_head(self.sessions, self.anchors)


def _stop_engine_run(runner: JobRunner | None, engine: str, run_id: str) -> str:
    """Stop a dead process's engine run with ``runner``, best effort: one line saying how it went."""
    stop = getattr(runner, "stop_run", None)
    if stop is None or getattr(runner, "engine_name", "engine") != engine:  # another engine's run
        now_running = "no training engine is configured now" if runner is None else f"jobs now run on {runner}"
        return f"not stopped ({now_running}); stop it by hand"
    try:
        return str(stop(run_id))
    except Exception as exc:  # noqa: BLE001 - recovery goes on; the failure is recorded with the job
        return f"could not stop it ({type(exc).__name__}: {first_line(exc)}); stop it on the engine"


def _cancelled(exc: BaseException | None) -> bool:
    """Whether ``exc`` is, or was raised from, a ``JobCancelled`` (an engine may wrap the callback's error)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, JobCancelled):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
