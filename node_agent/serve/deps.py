"""Dependencies a route names in its signature: who calls (``Caller``) and what it works with."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from node_agent.serve.access import API_PREFIX, PUBLIC, allowed_roles
from node_agent.serve.advisor import AdvisorHolder, Scorer
from node_agent.serve.errors import Forbidden, NotAuthenticated
from node_agent.serve.records import DecisionLog
from node_agent.serve.tokens import TokenInfo, TokenStore

__all__ = ["Caller", "CurrentAdvisor", "Holder", "Records", "Tokens", "api_router", "authorize"]

_bearer = HTTPBearer(auto_error=False,
                     description="A site token: `fenji node token create` or POST /api/v1/admin/tokens")


async def authorize(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> TokenInfo | None:
    """Enforce ``ACCESS`` for the endpoint being called: 401 without a valid token, 403 for a wrong role.

    The dependencies here are ``async`` because they only read memory (the token file is reread only
    when it changes, and it is tiny): a thread-pool hop would cost more than the work."""
    roles = allowed_roles(request.method, request.scope["route"].path)
    if roles is PUBLIC:
        return None
    if credentials is None:
        raise NotAuthenticated("this endpoint needs a bearer token (Authorization: Bearer <token>)")
    caller = request.app.state.tokens.authenticate(credentials.credentials)
    if caller is None:
        raise NotAuthenticated("unknown or revoked token")
    if caller.role not in roles:
        allowed = ", ".join(sorted(r.value for r in roles))
        raise Forbidden(f"role {caller.role.value!r} may not call this endpoint (allowed: {allowed})")
    return caller


async def _advisor(request: Request) -> Scorer:
    return request.app.state.holder.current  # read once: the whole request uses this advisor


async def _holder(request: Request) -> AdvisorHolder:
    return request.app.state.holder


async def _records(request: Request) -> DecisionLog:
    return request.app.state.records


async def _tokens(request: Request) -> TokenStore:
    return request.app.state.tokens


Caller = Annotated[TokenInfo, Depends(authorize)]
CurrentAdvisor = Annotated[Scorer, Depends(_advisor)]
Holder = Annotated[AdvisorHolder, Depends(_holder)]
Records = Annotated[DecisionLog, Depends(_records)]
Tokens = Annotated[TokenStore, Depends(_tokens)]


def api_router(prefix: str = "", *, public: bool = False, **kwargs: Any) -> APIRouter:
    """A router under ``/api/v1``, guarded by ``authorize`` unless ``public``. The prefix and the guard
    are set on the router itself, so each route carries its full path and its guard wherever it is
    included."""
    return APIRouter(prefix=API_PREFIX + prefix, dependencies=[] if public else [Depends(authorize)], **kwargs)
