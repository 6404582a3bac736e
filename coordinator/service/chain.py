"""The coordinator's audit chain in its database: appended in the transaction of the change it
records, checked with ``federation.audit``'s rules, and anchored at the key holder.

- ``append`` locks the head row (``FOR UPDATE``; SQLite's transactions are ``BEGIN IMMEDIATE``),
  reads the last entry, chains the new one and writes it, all in the caller's transaction: a change
  and its entry commit together or not at all, and the primary key on ``seq`` forbids a fork.
- ``anchor_head`` (after a commit) asks the key holder to countersign the head, sending the entries
  since the key holder's latest anchor (it signs only a head that extends that one), and stores the answer.
- ``verify`` checks the chain, every stored anchor, and the key holder's own latest anchor: an edit,
  a deletion, a reordering or a torn line breaks the chain; a dropped tail or a re-chained rewrite
  contradicts an anchor; an entry appended behind the service's back was never countersigned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from coordinator.service.anchoring import AnchorClient
from coordinator.service.db import AuditAnchor, AuditHead, AuditRow
from federation.audit import (
    GENESIS,
    Anchor,
    chain_entry,
    check_chain,
    entry_line,
    parse_line,
    verify_anchor,
)
from federation.errors import AuditTamperedError, SettingsError
from models.errors import first_line

__all__ = ["WHERE", "Verdict", "anchor_head", "append", "ensure_head", "read_chain", "verify"]

log = logging.getLogger("fenji.coordinator")
WHERE = "(the coordinator's database)"


def ensure_head(sessions: sessionmaker) -> None:
    """Create the head row once (before any request, so concurrent first appends cannot race for it)."""
    with sessions() as session:
        if session.get(AuditHead, 1) is None:
            session.add(AuditHead(id=1, seq=0))
            session.commit()


def append(session: Session, *, actor: str, action: str, **details: Any) -> dict[str, Any]:
    """Chain one entry in ``session``'s transaction (the caller commits it with its change).

    Raises
    ------
    AuditTamperedError
        If the last entry is missing or unreadable (nothing is written; the change must not happen).
    """
    head = session.execute(select(AuditHead).where(AuditHead.id == 1).with_for_update()).scalar_one_or_none()
    if head is None:
        head = AuditHead(id=1, seq=0)
        session.add(head)
    last = None
    if head.seq:
        row = session.get(AuditRow, head.seq)
        if row is None:
            raise AuditTamperedError(f"audit log {WHERE}: its last entry {head.seq} is missing; refusing to append")
        last = parse_line(row.line, head.seq, WHERE)
        if last.get("seq") != head.seq or not isinstance(last.get("hash"), str):
            raise AuditTamperedError(f"audit log {WHERE}: its last entry is not entry {head.seq}; refusing to append")
    entry = chain_entry(last, actor=actor, action=action, details=details)
    session.add(AuditRow(seq=entry["seq"], line=entry_line(entry)))
    head.seq = entry["seq"]
    session.flush()
    return entry


def read_chain(session: Session) -> list[dict[str, Any]]:
    """Every entry, in order, once the chain checks (``AuditTamperedError`` where it breaks)."""
    rows = session.execute(select(AuditRow).order_by(AuditRow.seq)).scalars().all()
    entries = [parse_line(row.line, i, WHERE) for i, row in enumerate(rows, start=1)]
    check_chain(entries, WHERE)
    return entries


def _head(session: Session) -> tuple[int, str]:
    row = session.execute(select(AuditRow).order_by(AuditRow.seq.desc()).limit(1)).scalar_one_or_none()
    if row is None:
        return 0, GENESIS
    return row.seq, parse_line(row.line, row.seq, WHERE)["hash"]


def anchor_head(sessions: sessionmaker, client: AnchorClient | None) -> Anchor | None:
    """Have the key holder countersign the current head and store the anchor; ``None`` (logged) if it
    cannot be had now: the change stands, and the next anchor covers it."""
    if client is None:
        return None
    with sessions() as session:
        try:
            latest = client.latest()
            seq, head = _head(session)
            after = latest.seq if latest else 0
            lines = session.execute(select(AuditRow.line).where(AuditRow.seq > after, AuditRow.seq <= seq)
                                    .order_by(AuditRow.seq)).scalars().all()
            session.rollback()  # release SQLite's lock while the key holder answers
            anchor = client.anchor(seq, head, list(lines))
        except (SettingsError, AuditTamperedError) as exc:
            log.warning("audit head %s not anchored: %s", seq, first_line(exc))
            return None
        session.add(AuditAnchor(**anchor.model_dump()))
        session.commit()
        return anchor


@dataclass
class Verdict:
    """What ``verify`` found: the chain's length, the anchors checked, the last countersigned entry."""

    entries: int
    anchors: int = 0
    anchored_seq: int = 0
    keyholder: str = ""
    notes: list[str] = field(default_factory=list)


def _check_anchor(anchor: Anchor, entries: list[dict[str, Any]], verify_key: bytes | None, what: str) -> None:
    if verify_key is not None and not verify_anchor(anchor, verify_key):
        raise AuditTamperedError(f"audit log {WHERE}: {what} for entry {anchor.seq} is not the key holder's "
                                 "signature (forged anchor)")
    if anchor.seq > len(entries):
        raise AuditTamperedError(f"audit log {WHERE}: the key holder countersigned entry {anchor.seq}, but the "
                                 f"chain ends at entry {len(entries)} (its tail was dropped)")
    head = entries[anchor.seq - 1]["hash"] if anchor.seq else GENESIS
    if head != anchor.head:
        raise AuditTamperedError(f"audit log {WHERE}: entry {anchor.seq} is not the one the key holder "
                                 "countersigned (the chain was rewritten up to there)")


def verify(session: Session, client: AnchorClient | None) -> Verdict:
    """Check the chain and its anchors; with ``client``, also against the key holder's latest anchor,
    and every entry must be countersigned.

    Raises
    ------
    AuditTamperedError
        At the first thing that does not hold.
    SettingsError
        If the key holder cannot be asked.
    """
    entries = read_chain(session)
    verdict = Verdict(entries=len(entries))
    verify_key = client.verify_key() if client is not None else None
    stored = session.execute(select(AuditAnchor).order_by(AuditAnchor.id)).scalars().all()
    for row in stored:
        anchor = Anchor(seq=row.seq, head=row.head, caller=row.caller, keyholder=row.keyholder,
                        signed_at=row.signed_at, signature=row.signature)
        _check_anchor(anchor, entries, verify_key, "a stored anchor")
        verdict.anchored_seq = max(verdict.anchored_seq, anchor.seq)
        verdict.keyholder = anchor.keyholder
    verdict.anchors = len(stored)
    if client is None:
        verdict.notes.append("not checked against the key holder (FENJI_KEYHOLDER_URL unset): a dropped tail "
                             "together with its anchors, or an entry appended behind the service's back, goes unseen")
        return verdict
    latest = client.latest()
    callers = {row.caller for row in stored} | ({latest.caller} if latest is not None else set())
    if len(callers) > 1:
        raise AuditTamperedError(f"audit log {WHERE}: anchors for {', '.join(sorted(callers))}: the key holder "
                                 "anchors one log under one caller, so another caller's anchors belong to a fork")
    if latest is not None:
        _check_anchor(latest, entries, verify_key, "the key holder's latest anchor")
        verdict.anchored_seq, verdict.keyholder = max(verdict.anchored_seq, latest.seq), latest.keyholder
    if len(entries) > verdict.anchored_seq:
        raise AuditTamperedError(
            f"audit log {WHERE}: entries {verdict.anchored_seq + 1}-{len(entries)} were never countersigned by the "
            "key holder (appended behind the service's back, or written while the key holder was down: then "
            "`fenji audit anchor` countersigns them)")
    return verdict
