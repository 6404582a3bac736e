"""Dependencies a route names in its signature: who calls (``Caller``), the database (``Db``) and the
service's parts (``Coordinator``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from coordinator.service.access import API_PREFIX, PUBLIC, allowed_roles
from coordinator.service.accounts import authenticate
from coordinator.service.anchoring import AnchorClient
from coordinator.service.db import Account
from coordinator.service.errors import ERROR_RESPONSES, Forbidden, NotAuthenticated
from coordinator.service.jobs import JobQueue
from coordinator.service.versions import ModelRegistry

__all__ = ["Caller", "Coordinator", "CoordinatorDep", "Db", "api_router", "authorize"]

_bearer = HTTPBearer(auto_error=False, description="An account's token: `fenji coordinator account add`")


@dataclass
class Coordinator:
    """The service's parts: its database, the model registry, the key holder that anchors its audit,
    and the training jobs' queue (its worker runs only once ``jobs.start(runner)`` is called)."""

    sessions: sessionmaker
    registry: ModelRegistry
    anchors: AnchorClient | None = None
    jobs: JobQueue | None = None

    def __post_init__(self) -> None:
        if self.jobs is None:
            self.jobs = JobQueue(self.sessions, self.anchors)


def _coordinator(request: Request) -> Coordinator:
    return request.app.state.coordinator


CoordinatorDep = Annotated[Coordinator, Depends(_coordinator)]


def _session(coordinator: CoordinatorDep) -> Iterator[Session]:
    with coordinator.sessions() as session:
        yield session


Db = Annotated[Session, Depends(_session)]


def authorize(request: Request, session: Db,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Account | None:
    """Enforce ``ACCESS`` for the endpoint being called: 401 without a valid token, 403 for a wrong role."""
    roles = allowed_roles(request.method, request.scope["route"].path)
    if roles is PUBLIC:
        return None
    if credentials is None:
        raise NotAuthenticated("this endpoint needs a bearer token (Authorization: Bearer <token>)")
    account = authenticate(session, credentials.credentials)
    if account is None:
        raise NotAuthenticated("unknown or revoked token")
    if account.role not in {r.value for r in roles}:
        allowed = ", ".join(sorted(r.value for r in roles))
        raise Forbidden(f"role {account.role!r} may not call this endpoint (allowed: {allowed})")
    return account


Caller = Annotated[Account, Depends(authorize)]


def api_router(prefix: str = "", *, public: bool = False, **kwargs: Any) -> APIRouter:
    """A router under ``/api/v1``, guarded by ``authorize`` unless ``public``."""
    return APIRouter(prefix=API_PREFIX + prefix, dependencies=[] if public else [Depends(authorize)],
                     responses={} if public else ERROR_RESPONSES, **kwargs)
