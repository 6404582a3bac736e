"""``/audit``: the audit trail, its verification and anchoring at the key holder."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from coordinator.service import chain
from coordinator.service.deps import CoordinatorDep, Db, api_router
from coordinator.service.errors import ErrorBody, Unavailable
from coordinator.service.schemas import AuditEntry, AuditPage, VerifyResult
from federation.audit import Anchor
from federation.errors import AuditTamperedError, SettingsError

router = api_router("/audit", tags=["audit"])
_UNAVAILABLE = {503: {"model": ErrorBody, "description": "The chain does not verify, or the key holder is unreachable"}}


@router.get("", responses=_UNAVAILABLE, summary="Audit entries after `after`, oldest first")
def audit_entries(session: Db, after: Annotated[int, Query(ge=0, le=2_147_483_647)] = 0,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> AuditPage:
    entries = chain.read_chain(session)
    return AuditPage(entries=[AuditEntry(**e) for e in entries[after:after + limit]], total=len(entries))


@router.get("/verify", summary="Check the chain, its anchors and the key holder's latest anchor")
def verify(session: Db, coordinator: CoordinatorDep) -> VerifyResult:
    try:
        verdict = chain.verify(session, coordinator.anchors)
    except (AuditTamperedError, SettingsError) as exc:
        return VerifyResult(ok=False, error=str(exc))
    return VerifyResult(ok=True, entries=verdict.entries, anchors=verdict.anchors, anchored_seq=verdict.anchored_seq,
                        keyholder=verdict.keyholder, notes=verdict.notes)


@router.post("/anchor", responses=_UNAVAILABLE, summary="Have the key holder countersign the current head now")
def anchor(session: Db, coordinator: CoordinatorDep) -> Anchor:
    session.close()
    if coordinator.anchors is None:
        raise Unavailable("no key holder to anchor with: set FENJI_KEYHOLDER_URL and FENJI_KEYHOLDER_TOKEN")
    found = chain.anchor_head(coordinator.sessions, coordinator.anchors)
    if found is None:
        raise Unavailable("the key holder did not countersign the head (see the coordinator's log)")
    return found
