"""``/health`` (public) and ``/me``."""

from __future__ import annotations

from coordinator.service.deps import Caller, api_router
from coordinator.service.schemas import AccountPublic, Health

public = api_router(public=True, tags=["meta"])
router = api_router(tags=["meta"])


@public.get("/health", summary="Whether the coordinator is up")
def health() -> Health:
    return Health(status="ok")


@router.get("/me", summary="The calling account")
def me(caller: Caller) -> AccountPublic:
    return AccountPublic.of(caller)
