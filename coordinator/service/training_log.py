"""The training log (``FENJI_HOME/audit.jsonl``) under the countersigned chain.

Runs started from the command line (``fenji sim``, ``fenji demo``, deployment runs) are audited in
the training log, a hash chain in a file: on its own, whoever holds the file can re-chain it after an
edit. So where the service runs, its head is recorded in the service's chain (``training-log-head``:
how many entries, the last one's hash) after every such run and when the service starts, and the
key holder countersigns that chain. ``check`` then finds every recorded head in the file at its
place: an edit before it, a dropped tail or a re-chained rewrite contradicts a countersigned record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from coordinator.service.chain import append, read_chain
from federation.audit import AuditLog
from federation.errors import AuditTamperedError

__all__ = ["ACTION", "adopt", "check", "countersign"]

ACTION = "training-log-head"


def _recorded(chain: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry["details"] for entry in chain if entry["action"] == ACTION]


def adopt(session: Session, audit_path: Path, *, actor: str) -> dict[str, Any] | None:
    """Record the training log's current head in the chain (in ``session``'s transaction, not
    committed) unless the last record already names it; ``None`` when there is nothing new.

    Raises
    ------
    AuditTamperedError
        If the training log's own chain is broken, or it no longer holds a head recorded earlier
        (then nothing is recorded: a rewritten log is never adopted).
    """
    log = AuditLog(audit_path)
    if not Path(audit_path).is_file():
        return None
    count = log.verify()
    if count == 0:
        return None
    chain = read_chain(session)
    check(chain, audit_path)
    head = log.entries()[-1]["hash"]
    records = _recorded(chain)
    if records and records[-1]["entries"] == count and records[-1]["head"] == head:
        return None
    return append(session, actor=actor, action=ACTION, path=str(audit_path), entries=count, head=head)


def check(chain: list[dict[str, Any]], audit_path: Path) -> int:
    """Check that the training log still holds every head recorded in ``chain`` (an already checked
    chain); return how many of its entries those records cover (0: none recorded).

    Raises
    ------
    AuditTamperedError
        If the file is missing while heads were recorded, or a recorded head is not at its place.
    """
    records = _recorded(chain)
    if not records:
        return 0
    where = f"training log {audit_path}"
    if not Path(audit_path).is_file():
        raise AuditTamperedError(f"{where} is gone, but the coordinator's chain recorded {records[-1]['entries']} "
                                 "of its entries")
    entries = AuditLog(audit_path).entries()
    for record in records:
        n = int(record["entries"])
        if len(entries) < n:
            raise AuditTamperedError(f"{where} has {len(entries)} entries, but the coordinator's chain recorded {n}: "
                                     "its tail was dropped")
        if entries[n - 1].get("hash") != record["head"]:
            raise AuditTamperedError(f"{where}: entry {n} is not the one the coordinator's chain recorded (edited, "
                                     "or the log was re-chained)")
    return max(int(record["entries"]) for record in records)


def countersign(settings: Any, *, actor: str = "coordinator") -> bool:
    """After a run audited in the training log: where the service runs (``settings.runs_service``),
    record the log's head in its chain and have the key holder countersign it (the service's own
    rule: a change stands if the key holder is down, and the next anchor covers it). Returns whether
    a head was recorded."""
    from coordinator.service import open_coordinator
    from coordinator.service.chain import anchor_head

    if not settings.runs_service:
        return False
    coordinator = open_coordinator(settings)
    with coordinator.sessions() as session:
        if adopt(session, settings.audit_path, actor=actor) is None:
            return False
        session.commit()
    anchor_head(coordinator.sessions, coordinator.anchors)
    return True
