"""The coordinator's side of a surveillance query: one message to every site, one sum per district.

``run_surveillance`` sends a ``SyndromeCounts`` query (``federation.surveillance``) to every site as a
``query.surveillance`` message. Each site answers as its own policy says (``node_agent.surveillance``):
a declared refusal, its own published series (suppressed at its k, checked by its egress guard), or
its daily counts encrypted, with its district bound into the label (``sum_phase``). The encrypted
answers are grouped by district and each group is one sum, screened and added like any other
(``ReplyScreen``, ``RunningSum``), which the key holder decrypts only over at least min-sites
clinics and under its cohort ledger. A district without enough clinics, or whose sum the key holder
refuses, is reported as unavailable with the reason; the query fails only if nothing at all came back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from coordinator.aggregator import Aggregator
from coordinator.analytics import query_run, query_sum
from coordinator.audit import AuditLog
from coordinator.errors import NotEnoughSitesError
from coordinator.strategy import ExcludedReply, ReplyScreen, cohort_of
from coordinator.streaming import StreamingGrid
from federation.crypto import WIDE_SCALE_BITS
from federation.errors import PrivacyError
from federation.keyholder_api import Decryptor
from federation.surveillance import (
    ClinicRelease,
    SurveillanceResult,
    SyndromeCounts,
    day_layout,
    decode_sum,
    periods,
    query_text,
    sum_phase,
)
from models.errors import first_line
from models.spec import TaskSpec

__all__ = ["MESSAGE_TYPE", "PHASE", "run_surveillance"]

MESSAGE_TYPE = "query.surveillance"
PHASE = "surveillance"  # the phase of its replies left out, as a reply screen names it


def _send(grid: Grid, nodes: list[int], content: RecordDict, timeout: float) -> Iterable[Message]:
    messages = [Message(content=content, message_type=MESSAGE_TYPE, dst_node_id=n) for n in nodes]
    return grid.send_and_receive(messages, timeout=timeout)


def _published(reply: Message, query: SyndromeCounts) -> ClinicRelease:
    """A clinic's own series from its reply, or ``ValueError`` if it does not fit the query."""
    site = reply.content["site"]
    interval = str(site["series-interval"])
    if interval not in ("day", "week"):
        raise ValueError(f"a series by {interval!r}")
    record = reply.content["clinic-series"]
    counts, flags = record["counts"].numpy(), record["suppressed"].numpy()
    shape = (len(periods(query, interval)), len(query.syndromes))
    if counts.shape != shape or flags.shape != shape:
        raise ValueError(f"a {interval} series of shape {counts.shape}, the query's is {shape}")
    return ClinicRelease(str(site["site-id"]), str(site["district"]), interval, counts.astype(float),
                         flags.astype(float))


def _district_sum(replies: list[Message], district: str, query: SyndromeCounts, key_holder: Decryptor | None,
                  aggregator: Aggregator | None, *, run_id: str, task: TaskSpec, min_sites: int,
                  excluded: list[ExcludedReply]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One district's decrypted daily sum (counts, flags, its clinics); raises ``PrivacyError`` if refused."""
    shape, phase = day_layout(query), sum_phase(district)
    screen = ReplyScreen(min_sites=min_sites, aggregator=aggregator)
    running = None if aggregator is None else aggregator.running(length=shape.length, scale_bits=WIDE_SCALE_BITS)
    try:
        good = screen.usable(replies, phase=phase, server_round=0, length=shape.length, scale_bits=WIDE_SCALE_BITS,
                             into=running)
    finally:
        excluded.extend(screen.named())
    summed = query_sum(good, running, key_holder, run_id=run_id, phase=phase, task=task, length=shape.length)
    counts, flags, _ = decode_sum(query, summed)
    return counts, flags, sorted(cohort_of(good))


def run_surveillance(grid: Grid, query: SyndromeCounts, key_holder: Decryptor | None, *, task: TaskSpec,
                     min_sites: int = 3, timeout: float = 600.0, nodes: list[int] | None = None,
                     audit: AuditLog | None = None, screen: ReplyScreen | None = None) -> SurveillanceResult:
    """Ask every site for ``query``'s daily syndrome counts about ``task``; one sum per district.

    ``key_holder`` ``None`` runs in plaintext (sites whose policy allows it only). min-sites is the
    key holder's, or more. With ``audit``, an answered query, each district's cohort, the published
    series, the refusals and the sites' audit heads are appended to that log (a failed one is its
    caller's to audit: ``coordinator.analytics.audit_failure``). ``screen``, if given, records the
    replies left out, named as its ``site_of`` knows them (as ``run_query``'s does): a caller reads from
    it the sites left out even when the query fails, those that declined included.

    Raises
    ------
    NotEnoughSitesError
        If no district could be summed and no clinic published its own series; its message lists the
        sites left out as a reply screen's does (``Left out: <site>: <reason>; ...``).
    """
    grid = StreamingGrid(grid)
    # One run per query: the key holder decrypts each district's sum once.
    run_id, config, aggregator, min_sites = query_run(task, key_holder, min_sites, "surveillance-query",
                                                      query_text(query))
    screen = screen if screen is not None else ReplyScreen(min_sites=min_sites, aggregator=aggregator)
    nodes = list(nodes if nodes is not None else grid.get_node_ids())
    result = SurveillanceResult(query=query)
    by_district: dict[str, list[Message]] = defaultdict(list)
    answered, declined = set(), []
    for reply in _send(grid, nodes, RecordDict({"config": config}), timeout):
        node = reply.metadata.src_node_id
        answered.add(node)
        content = None if reply.has_error() else reply.content
        if content is not None and ("site" in content or "refusal" in content):
            record = content["site"] if "site" in content else content["refusal"]
            screen.site_of[node] = str(record.get("site-id", screen.site_of.get(node, node)))
        if content is None or ("site" not in content and "refusal" not in content):
            reason = first_line(reply.error.reason) if reply.has_error() else "no site record"
            screen.excluded.append(ExcludedReply(0, PHASE, node, reason))
        elif "refusal" in content:
            reason = str(content["refusal"].get("reason", ""))
            result.refused[screen.site_of[node]] = reason
            declined.append(ExcludedReply(0, PHASE, node, f"declined: {reason}"))
        elif "clinic-series" in content:
            try:
                release = _published(reply, query)
            except (KeyError, TypeError, ValueError) as exc:
                screen.excluded.append(ExcludedReply(0, PHASE, node, f"a published series that does not fit: {exc}"))
                continue
            result.clinics[release.site] = release
        else:
            by_district[str(content["site"].get("district", ""))].append(reply)
        if content is not None and "site" in content:
            result.audit_heads[str(content["site"]["site-id"])] = str(content["site"].get("audit-head", ""))
    for node in sorted(set(nodes) - answered):
        screen.excluded.append(ExcludedReply(0, PHASE, node, "no reply before the timeout"))
    for district, replies in sorted(by_district.items()):
        try:
            result.sums[district] = _district_sum(replies, district, query, key_holder, aggregator, run_id=run_id,
                                                  task=task, min_sites=min_sites, excluded=screen.excluded)
        except PrivacyError as exc:  # too few clinics in the sum, or the key holder's refusal
            result.unavailable[district] = first_line(exc)
    result.excluded = screen.named()
    if not result.sums and not result.clinics:
        screen.excluded.extend(declined)  # nothing came back: a site that declined is left out too
        # Each district's own reason without its screen's "Left out" list: those replies are in the one below.
        districts = "; ".join(f"{d}: {r.partition('. Left out: ')[0]}" for d, r in result.unavailable.items())
        left_out = "; ".join(f"{e.label}: {e.reason}" for e in screen.named())
        raise NotEnoughSitesError(f"{PHASE} (round 0): no district could be summed"
                                  f"{f' ({districts})' if districts else ''} and no clinic published a series. "
                                  f"Left out: {left_out or 'none'}")
    if audit is not None:
        audit.append(actor="coordinator", action="surveillance-query", run_id=run_id, task=task.name,
                     query=query_text(query), districts={d: s[2] for d, s in result.sums.items()},
                     published={s: r.interval for s, r in result.clinics.items()}, unavailable=result.unavailable,
                     refused=result.refused, excluded=[e.to_dict() for e in result.excluded],
                     site_audit_heads=result.audit_heads)
    return result
