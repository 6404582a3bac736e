"""The coordinator's side of a federated-statistics query: send it, add the answers, ask for the sum.

``run_query`` sends one typed query (``federation.analytics``) to every site as a ``query.analytics``
message, screens and adds the encrypted answers as they arrive (``ReplyScreen`` into a
``RunningSum``, as ``run_federation`` does), and asks the key holder to decrypt the sum. Each query
is its own run (a fresh run id), so it is its own label at the key holder: decrypted once, and under
the key holder's cohort ledger like every other sum (a query over all sites but one, after one over
all sites, is refused unless the sites noised it). The sites suppress small cells and add noise
before anything is encrypted; the coordinator only learns the sums, and at how many sites each cell
was suppressed.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from coordinator.aggregator import Aggregator
from coordinator.audit import AuditLog
from coordinator.errors import NotEnoughSitesError
from coordinator.strategy import (
    ReplyScreen,
    check_total,
    cohort_of,
    declared_rows,
    inputs_of,
    site_dp_of,
)
from coordinator.streaming import RunningSum, StreamingGrid
from federation.analytics import AnalyticsResult, canonical, decode, layout
from federation.crypto import WIDE_SCALE_BITS
from federation.keyholder_api import Decryptor, DecryptRequest
from federation.tags import QueryLabel
from models.spec import TaskSpec

__all__ = ["PHASE", "audit_failure", "query_run", "query_sum", "run_query"]

PHASE = "analytics"
MESSAGE_TYPE = "query.analytics"


def _send(grid: Grid, nodes: list[int], content: RecordDict, timeout: float) -> Iterable[Message]:
    messages = [Message(content=content, message_type=MESSAGE_TYPE, dst_node_id=n) for n in nodes]
    return grid.send_and_receive(messages, timeout=timeout)


def query_run(task: TaskSpec, key_holder: Decryptor | None, min_sites: int, key: str, query: str
              ) -> tuple[str, ConfigRecord, Aggregator | None, int]:
    """A new query's run: its id, the config of its one message to the sites (the task, the query
    as ``key``: ``query``, and with a key holder its signed public context), the aggregator of its
    encrypted answers (``None`` in plaintext) and min-sites (the key holder's, if higher)."""
    run_id = uuid.uuid4().hex  # one run per query: the key holder decrypts each of its sums once
    config = ConfigRecord({"task-json": task.model_dump_json(), "task-name": task.name, "run-id": run_id,
                           key: query, "plaintext": key_holder is None})
    aggregator = None
    if key_holder is not None:
        info = key_holder.info()
        min_sites = max(min_sites, info.min_sites)
        aggregator = Aggregator(info.public_context_bytes)
        # A query is a run of its own: its one message carries the signed public context.
        config["ckks-context"] = info.public_context_bytes
        config["ckks-context-signature"] = info.signature_bytes
        config["ckks-context-sha256"] = hashlib.sha256(info.public_context_bytes).hexdigest()
    return run_id, config, aggregator, min_sites


def query_sum(replies: list[Message], running: RunningSum | None, key_holder: Decryptor | None, *, run_id: str,
              phase: str, task: TaskSpec, length: int) -> np.ndarray:
    """The sum of a query's usable ``replies``: ``running`` (their encrypted answers, added) decrypted by
    the key holder under the query's label, or in plaintext (no key holder) their answers added; its
    first entry, the row count, checked against the rows the sites declared.

    Raises
    ------
    PrivacyError
        If the key holder refuses the sum.
    AggregateCheckError
        If the row count contradicts the rows the sites declared.
    """
    if running is not None and key_holder is not None:
        label = QueryLabel(run_id=run_id, phase=phase, round=0, task=task.name, inputs=inputs_of(replies))
        request = DecryptRequest.of(label, cohort=cohort_of(replies), length=length, scale_bits=WIDE_SCALE_BITS,
                                    site_dp=site_dp_of(replies))
        summed = np.asarray(key_holder.decrypt_aggregate(running.serialize(), request))
    else:
        summed = np.sum([r.content["arrays"].to_numpy_ndarrays()[0] for r in replies], axis=0)
    check_total(f"{phase}: the row count", float(summed[0]), declared_rows(replies), absolute=0.5)
    return summed


def run_query(grid: Grid, query, key_holder: Decryptor | None, *, task: TaskSpec, min_sites: int = 3,
              timeout: float = 600.0, nodes: list[int] | None = None, audit: AuditLog | None = None,
              screen: ReplyScreen | None = None) -> AnalyticsResult:
    """Ask the sites ``query`` about ``task`` and return the decrypted, decoded result.

    ``key_holder`` ``None`` runs it in plaintext (sites whose policy allows it only); ``nodes``
    defaults to every node of the grid. min-sites is the key holder's, or more. With ``audit``, the
    query, its cohort, what was suppressed and the sites' audit heads are appended to that log (each
    site audits its own answer in its node audit log). ``screen``, if given, is the query's reply screen
    (its ``min_sites`` and ``aggregator`` are set here): a caller reads from it the sites left out even
    when the query fails.

    Raises
    ------
    QueryError
        If the query does not fit the task (before anything is sent).
    NotEnoughSitesError
        If fewer than min-sites sites answered (declined, failed, or too few rows).
    PrivacyError
        If the key holder refuses the sum (differencing, a replay, a tag that does not check).
    AggregateCheckError
        If the decrypted row count contradicts the rows the sites declared.
    """
    shape = layout(query, task)
    grid = StreamingGrid(grid)
    run_id, config, aggregator, min_sites = query_run(task, key_holder, min_sites, "analytics-query", canonical(query))
    running = None if aggregator is None else aggregator.running(length=shape.length, scale_bits=WIDE_SCALE_BITS)
    nodes = list(nodes if nodes is not None else grid.get_node_ids())
    if len(nodes) < min_sites:
        raise NotEnoughSitesError(f"{len(nodes)} site(s) connected, a query needs at least {min_sites} (min-sites)")
    screen = screen if screen is not None else ReplyScreen(min_sites=min_sites, aggregator=aggregator)
    screen.min_sites, screen.aggregator = min_sites, aggregator
    replies = screen.usable(_send(grid, nodes, RecordDict({"config": config}), timeout), phase=PHASE, server_round=0,
                            expected_nodes=nodes, length=shape.length, scale_bits=WIDE_SCALE_BITS, into=running)
    epsilons = set(site_dp_of(replies).values())
    summed = query_sum(replies, running, key_holder, run_id=run_id, phase=PHASE, task=task, length=shape.length)
    result = decode(query, task, summed, sites=sorted(cohort_of(replies)),
                    dp_epsilon=max(epsilons) if epsilons else 0.0)
    result.excluded = screen.named()
    result.audit_heads = {str(r.content["site"]["site-id"]): str(r.content["site"].get("audit-head", ""))
                          for r in replies}
    if audit is not None:
        audit.append(actor="coordinator", action="analytics-query", run_id=run_id, task=task.name,
                     query=canonical(query), cohort=result.sites, dp_epsilon=result.dp_epsilon,
                     suppressed_cells=int((result.suppressed_sites > 0).sum()),
                     excluded=[e.to_dict() for e in result.excluded], site_audit_heads=result.audit_heads)
    return result


def audit_failure(audit: AuditLog, query: str, error: BaseException, *, task: str, excluded: list[dict[str, Any]],
                  **details: Any) -> None:
    """Append the coordinator's record of a query that failed, with the sites it left out (``excluded``):
    ``surveillance-query-failed`` for a surveillance query (kind ``syndromes``), else
    ``analytics-query-failed`` (a query text that does not parse too). ``run_query`` and
    ``coordinator.syndromic.run_surveillance`` audit only the queries they answer: their callers, which
    see every way a query ends, audit the failures."""
    try:
        kind = json.loads(query).get("kind")
    except (ValueError, AttributeError):  # not JSON, or not an object: no query at all
        kind = None
    action = "surveillance-query-failed" if kind == "syndromes" else "analytics-query-failed"
    audit.append(actor="coordinator", action=action, task=task, query=query, reason=str(error),
                 error=type(error).__name__, excluded=excluded, **details)
