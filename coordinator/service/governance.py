"""Promotion to production under four eyes, and rollback, each audited with the change.

- ``approve``: a commissioner's first approval of a version opens a *pending* promotion; a second
  approval by a *different* commissioner applies it: the registry alias moves
  (``coordinator.registry.promote``). The same commissioner twice is refused (``FourEyes``).
- ``rollback``: one commissioner, with a reason, points the alias back at a version that was applied
  before (it had its two approvals then).

The approval, its audit entry and the alias move succeed together: the entry is written in the
transaction first, the alias moves, then the transaction commits. If the registry refuses, the
transaction is rolled back; if the commit fails after the alias moved, the alias is moved back.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.registry import model_name, promote
from coordinator.service import chain
from coordinator.service.accounts import now
from coordinator.service.db import Account, Approval, Promotion
from coordinator.service.errors import Conflict, FourEyes, Unavailable
from coordinator.service.versions import ModelRegistry
from federation.errors import RegistryError
from models.errors import first_line

__all__ = ["ALIAS", "approve", "rollback"]

ALIAS = "production"


def _apply(session: Session, registry: ModelRegistry, promotion: Promotion, entry_details: dict, actor: str) -> None:
    """Audit, move the alias, commit: all or nothing (see the module's docstring)."""
    previous = registry.alias_version(promotion.task, promotion.alias)
    promotion.previous_version, promotion.status, promotion.applied_at = previous, "applied", now()
    chain.append(session, actor=actor, action=promotion.kind, task=promotion.task, model=model_name(promotion.task),
                 version=promotion.version, alias=promotion.alias, previous_version=previous,
                 bundle_sha256=promotion.bundle_sha256, promotion_id=promotion.id, **entry_details)
    try:
        promote(promotion.task, promotion.version, tracking_uri=registry.tracking_uri, alias=promotion.alias)
    except RegistryError as exc:
        session.rollback()
        raise Unavailable(f"the registry refused to move {promotion.alias!r}: {first_line(exc)}; nothing changed") from exc
    try:
        session.commit()
    except Exception:
        # The alias must not stay moved without its audit entry.
        if previous is not None:
            promote(promotion.task, previous, tracking_uri=registry.tracking_uri, alias=promotion.alias)
        else:
            registry.client.delete_registered_model_alias(model_name(promotion.task), promotion.alias)
        raise


def approve(session: Session, registry: ModelRegistry, account: Account, *, task: str, version: str,
            reason: str) -> Promotion:
    """Record ``account``'s approval of ``task`` ``version`` for production; apply it on the second.

    Raises
    ------
    NotFound
        If the version does not exist.
    FourEyes
        If ``account`` already approved this pending promotion.
    Conflict
        If the version already serves as production.
    """
    digest = registry.existing(task, version).bundle_sha256
    if registry.alias_version(task, ALIAS) == version:
        raise Conflict(f"{model_name(task)} version {version} is already {ALIAS!r}")
    pending = session.execute(select(Promotion).where(
        Promotion.kind == "promotion", Promotion.task == task, Promotion.version == version,
        Promotion.alias == ALIAS, Promotion.status == "pending")).scalar_one_or_none()
    if pending is None:
        pending = Promotion(kind="promotion", task=task, version=version, alias=ALIAS, status="pending",
                            created_at=now(), bundle_sha256=digest)
        session.add(pending)
        session.flush()
        session.add(Approval(promotion_id=pending.id, account_id=account.id, reason=reason, at=now()))
        chain.append(session, actor=account.name, action="promotion-approved", task=task, version=version,
                     alias=ALIAS, promotion_id=pending.id, reason=reason, approval=1, bundle_sha256=digest)
        session.commit()
        return pending
    signed = session.execute(select(Approval).where(Approval.promotion_id == pending.id)).scalars().all()
    if any(a.account_id == account.id for a in signed):
        raise FourEyes(f"{account.name} already approved {model_name(task)} version {version}: a promotion needs "
                       "a second, different commissioner")
    session.add(Approval(promotion_id=pending.id, account_id=account.id, reason=reason, at=now()))
    first = session.get(Account, signed[0].account_id)
    _apply(session, registry, pending, {
        "approvers": [first.name if first else str(signed[0].account_id), account.name],
        "reasons": [signed[0].reason, reason]}, actor=account.name)
    return pending


def rollback(session: Session, registry: ModelRegistry, account: Account, *, task: str, version: str,
             reason: str) -> Promotion:
    """Point production back at ``version``, which must have been applied before.

    Raises
    ------
    NotFound
        If the version does not exist.
    Conflict
        If it was never approved for production, or serves already.
    """
    digest = registry.existing(task, version).bundle_sha256
    approved = session.execute(select(Promotion.id).where(
        Promotion.task == task, Promotion.version == version, Promotion.alias == ALIAS,
        Promotion.status == "applied")).first()
    if approved is None:
        raise Conflict(f"{model_name(task)} version {version} was never approved for {ALIAS!r}: a rollback goes "
                       "back to an earlier approved version only (a new version needs two approvals)")
    if registry.alias_version(task, ALIAS) == version:
        raise Conflict(f"{model_name(task)} version {version} is already {ALIAS!r}")
    promotion = Promotion(kind="rollback", task=task, version=version, alias=ALIAS, status="pending",
                          created_at=now(), bundle_sha256=digest)
    session.add(promotion)
    session.flush()
    session.add(Approval(promotion_id=promotion.id, account_id=account.id, reason=reason, at=now()))
    _apply(session, registry, promotion, {"approvers": [account.name], "reasons": [reason]}, actor=account.name)
    return promotion
