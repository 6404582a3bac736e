"""Accounts of the coordinator's API: a name, a role, and a bearer token shown once (only its SHA-256
is stored). Every change is audited in the same transaction (``coordinator.service.chain``)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timezone

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from coordinator.service import chain
from coordinator.service.access import Role
from coordinator.service.db import Account
from coordinator.service.errors import Conflict, NotFound

__all__ = ["TOKEN_PREFIX", "add_account", "authenticate", "bootstrap_admin", "now", "revoke_account"]

TOKEN_PREFIX = "fco_"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def authenticate(session: Session, token: str) -> Account | None:
    """The active account a bearer token belongs to (looked up by its hash; the token is stored nowhere)."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    account = session.execute(select(Account).where(Account.token_sha256 == _digest(token))).scalar_one_or_none()
    return account if account is not None and account.revoked_at is None else None


def add_account(session: Session, *, name: str, role: Role | str, actor: str) -> tuple[Account, str]:
    """A new account and its token (shown once), audited as ``account-added``; committed.

    Raises
    ------
    Conflict
        If the name is taken.
    """
    name, role = name.strip(), Role(role)
    if not name:
        raise Conflict("an account needs a name")
    if session.execute(select(Account.id).where(Account.name == name)).first() is not None:
        raise Conflict(f"an account named {name!r} exists already")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    account = Account(name=name, role=role.value, token_sha256=_digest(token), created_at=now())
    session.add(account)
    try:
        session.flush()
    except IntegrityError as exc:  # the same name added concurrently
        session.rollback()
        raise Conflict(f"an account named {name!r} exists already") from exc
    chain.append(session, actor=actor, action="account-added", account_id=account.id, name=name, role=role.value)
    session.commit()
    return account, token


def revoke_account(session: Session, account_id: int, *, actor: str) -> Account:
    """Revoke an account's token (audited as ``account-revoked``); committed.

    Raises
    ------
    NotFound
        If there is no such active account.
    Conflict
        If it is the last active coordinator admin (nobody could manage accounts then).
    """
    account = session.get(Account, account_id)
    if account is None or account.revoked_at is not None:
        raise NotFound(f"no active account {account_id}")
    if account.role == Role.COORDINATOR_ADMIN.value:
        admins = session.execute(select(func.count()).select_from(Account).where(
            Account.role == Role.COORDINATOR_ADMIN.value, Account.revoked_at.is_(None))).scalar_one()
        if admins <= 1:
            raise Conflict("this is the last active coordinator admin: add another before revoking it")
    account.revoked_at = now()
    chain.append(session, actor=actor, action="account-revoked", account_id=account.id, name=account.name,
                 role=account.role)
    session.commit()
    return account


def bootstrap_admin(sessions: sessionmaker, name: str = "admin") -> str | None:
    """On a database without accounts, add the first coordinator admin and return its token (once);
    ``None`` if any account exists."""
    with sessions() as session:
        if session.execute(select(Account.id).limit(1)).first() is not None:
            return None
        _, token = add_account(session, name=name, role=Role.COORDINATOR_ADMIN, actor="bootstrap")
        return token
