"""Federated-statistics queries through the API: a typed query (``federation.analytics``) queued like a
training job and run by the same worker thread (``JobQueue``), through the runner the shell injected.

States::

    queued ──> running ──> succeeded | failed
       └─────> cancelled

A queued query is cancelled at once (``cancel``). A running one is not: it is one short call to the
runner (``run_query``) with no point between its steps at which to stop, so it ends succeeded or
failed. Submitting, starting, cancelling and ending are each written with their audit entry in one
transaction (``query-submitted``, ``query-started``, ``query-cancelled``, ``query-succeeded`` /
``query-failed``), then the head is anchored. The runner answers ``run_query(QueryRequest) -> dict``
(``result_of`` builds that dict from an ``AnalyticsResult``); a runner without ``run_query`` fails
every query, by name. A runner's ``JobFailed`` names the sites the query left out: they are stored
(``QueryLeftOut``) and in the ``query-failed`` entry (``failed_sites``), as a job's are. The answer's
``site_audit_heads`` (each site's node audit head after it answered) go in the ``query-succeeded``
entry, not in the stored result: an auditor checks them against the sites' own logs.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from coordinator.service import chain
from coordinator.service.access import Role
from coordinator.service.accounts import now
from coordinator.service.anchoring import AnchorClient
from coordinator.service.db import Account, QueryJob, QueryLeftOut
from coordinator.service.errors import Conflict, Forbidden, JobFailed, NotFound
from federation.analytics import canonical
from federation.surveillance import parse_any_query
from models.errors import first_line

__all__ = ["FINISHED", "HEADS", "SURVEILLANCE", "QueryRequest", "Worker", "cancel", "get", "latest", "recover",
           "result_of", "run_next", "submit"]

log = logging.getLogger("fenji.coordinator")
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})
WORKER = "coordinator"
SURVEILLANCE = '"kind":"syndromes"'  # in every stored surveillance query's canonical JSON (not in a statistics query's)
HEADS = "site_audit_heads"  # the key of an answer's sites' audit heads (result_of; a surveillance report's too)


class Worker(Protocol):
    """What a query needs of the jobs' queue (``coordinator.service.jobs.JobQueue``, which calls this module:
    named by shape, so the two modules do not import each other)."""

    sessions: sessionmaker
    anchors: AnchorClient | None
    runner: Any


@dataclass(frozen=True)
class QueryRequest:
    """What a runner is asked to answer: the query (a ``federation.analytics`` model) about ``task``."""

    id: int
    task: str
    query: Any


def submit(session: Session, account: Account, *, task: str, query: Any) -> QueryJob:
    """Queue a query (audited as ``query-submitted``); committed."""
    text = canonical(query)
    row = QueryJob(task=task, query_json=text, status=QUEUED, submitted_by=account.name, submitted_at=now())
    session.add(row)
    session.flush()
    chain.append(session, actor=account.name, action="query-submitted", query_id=row.id, task=task, query=text)
    session.commit()
    return row


def get(session: Session, query_id: int) -> QueryJob:
    row = session.get(QueryJob, query_id)
    if row is None:
        raise NotFound(f"no query {query_id}")
    return row


def latest(session: Session, *, surveillance: bool, limit: int) -> list[QueryJob]:
    """The latest surveillance runs (``surveillance``) or statistics queries, newest first."""
    kind = QueryJob.query_json.contains(SURVEILLANCE)
    return list(session.execute(select(QueryJob).where(kind if surveillance else ~kind)
                                .order_by(QueryJob.id.desc()).limit(limit)).scalars())


def cancel(session: Session, account: Account, query_id: int) -> QueryJob:
    """Cancel a queued statistics query (audited as ``query-cancelled``); committed.

    A data scientist cancels only the queries they submitted; coordinator admins any.

    Raises
    ------
    NotFound
        If there is no such statistics query (a surveillance run is not one).
    Forbidden
        If a data scientist asks to cancel someone else's query.
    Conflict
        If it is running (a running query cannot be stopped) or has ended.
    """
    row = session.execute(select(QueryJob).where(QueryJob.id == query_id).with_for_update()).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no query {query_id}")
    if SURVEILLANCE in row.query_json:
        raise NotFound(f"query {query_id} is a surveillance run, not a statistics query (see /surveillance/{query_id})")
    if account.role == Role.DATA_SCIENTIST.value and row.submitted_by != account.name:
        raise Forbidden(f"query {query_id} was submitted by {row.submitted_by}: a data scientist cancels only "
                        "their own queries")
    if row.status == RUNNING:
        raise Conflict(f"query {query_id} is running at the sites and cannot be stopped: a query is one short run "
                       "with no point at which to stop it; it ends succeeded or failed")
    if row.status in FINISHED:
        raise Conflict(f"query {query_id} has {row.status} already" if row.status != CANCELLED
                       else f"query {query_id} was cancelled already ({row.reason})")
    row.status, row.finished_at, row.reason = CANCELLED, now(), f"cancelled by {account.name} before it started"
    chain.append(session, actor=account.name, action="query-cancelled", query_id=row.id, task=row.task)
    session.commit()
    return row


def _plain(value: Any) -> Any:
    """JSON has no NaN (a mean of an empty cell): shown as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    return value


def result_of(result: Any) -> dict[str, Any]:
    """What a runner returns of an ``AnalyticsResult``: its frame's columns and records, the cohort, the
    rows, the noise, at how many sites each cell was suppressed, the replies left out, and the sites'
    audit heads (``HEADS``: audited, not stored with the result)."""
    frame = result.to_frame()
    return {"columns": [str(c) for c in frame.columns],
            "cells": [{str(k): _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")],
            "suppressed_sites": [int(s) for s in result.suppressed_sites], "rows": int(result.rows),
            "sites": list(result.sites), "dp_epsilon": float(result.dp_epsilon),
            "excluded": [e.to_dict() if hasattr(e, "to_dict") else e for e in result.excluded],
            HEADS: {str(site): str(head) for site, head in result.audit_heads.items()}}


def _claim(queue: Worker) -> QueryRequest | None:
    with queue.sessions() as session:
        row = session.execute(select(QueryJob).where(QueryJob.status == QUEUED).order_by(QueryJob.id).limit(1)
                              .with_for_update()).scalar_one_or_none()
        if row is None:
            return None
        row.status, row.started_at = RUNNING, now()
        chain.append(session, actor=WORKER, action="query-started", query_id=row.id, task=row.task)
        session.commit()
        request = QueryRequest(id=row.id, task=row.task, query=parse_any_query(row.query_json))  # surveillance too
    chain.anchor_head(queue.sessions, queue.anchors)
    return request


def run_next(queue: Worker) -> bool:
    """Answer the oldest queued query with the queue's runner; False if none was queued (or no runner)."""
    runner = queue.runner
    if runner is None:
        return False
    request = _claim(queue)
    if request is None:
        return False
    answer = getattr(runner, "run_query", None)
    try:
        if answer is None:
            raise NotImplementedError(f"the coordinator's runner ({runner}) does not answer queries")
        result = answer(request)
    except Exception as exc:  # noqa: BLE001 - every way a query ends is recorded, none leaves it "running"
        log.error("query %s failed", request.id, exc_info=exc)
        error, sites = (exc.error, exc.sites) if isinstance(exc, JobFailed) else (type(exc).__name__, [])
        _finish(queue, request.id, FAILED, error=error, reason=first_line(exc), sites=sites)
        return True
    _finish(queue, request.id, SUCCEEDED, result=result)
    return True


def recover(queue: Worker, *, reason: str) -> list[int]:
    """Mark every ``running`` query failed with ``reason``: the process that ran it died."""
    with queue.sessions() as session:
        ids = session.execute(select(QueryJob.id).where(QueryJob.status == RUNNING)).scalars().all()
    for query_id in ids:
        _finish(queue, query_id, FAILED, error="CoordinatorRestarted", reason=reason)
    return list(ids)


def _finish(queue: Worker, query_id: int, status: str, *, error: str | None = None, reason: str | None = None,
            result: dict[str, Any] | None = None, sites: list[dict[str, Any]] | None = None) -> None:
    """Set a running query's final state with its audit entry, in one transaction, then anchor; ``sites``:
    those a failed query left out."""
    with queue.sessions() as session:
        row = session.execute(select(QueryJob).where(QueryJob.id == query_id).with_for_update()).scalar_one()
        row.status, row.finished_at, row.error, row.reason = status, now(), error, reason
        entry: dict[str, Any] = {"query_id": row.id, "task": row.task}
        if result is not None:
            stored = {k: v for k, v in result.items() if k != HEADS}
            row.result_json = json.dumps(stored, default=float)
            entry |= {"sites": result.get("sites", []), "dp_epsilon": result.get("dp_epsilon"),
                      "suppressed_cells": sum(1 for s in result.get("suppressed_sites", []) if s > 0)}
            if result.get(HEADS):
                entry[HEADS] = dict(result[HEADS])
        if sites:
            row.left_out = QueryLeftOut(sites_json=json.dumps(sites))
        if error is not None:
            entry |= {"error": error, "reason": reason, "failed_sites": sites or []}
        chain.append(session, actor=WORKER, action=f"query-{status}", **entry)
        session.commit()
    chain.anchor_head(queue.sessions, queue.anchors)
