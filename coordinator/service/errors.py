"""Errors of the coordinator's API, each mapped to one HTTP status by one handler.

    FenjiError (models.errors)
    └── ServiceError               500
        ├── NotAuthenticated       401   no token, or one this coordinator never issued (or revoked)
        ├── Forbidden              403   the account's role may not call this endpoint
        ├── NotFound               404   unknown task, version or account
        ├── Conflict               409
        │   └── FourEyes                 the same commissioner approving a promotion twice
        ├── Unavailable            503   the model registry or the audit chain refused the change
        ├── Unprocessable          422   a request the engine cannot honour as asked (DP on the deployment engine)
        ├── JobCancelled                 raised between rounds to stop a job someone cancelled
        └── JobFailed                    a runner's report of a failed job: which sites refused or failed, why

The other ``FenjiError``s are mapped here too: ``RegistryError`` 503, ``AuditTamperedError`` 503
(no change is made on a chain that does not verify), ``SettingsError`` 503, ``QueryError`` 422 (a query
that does not fit its task). Every error body has one
shape, ``{"error": <class name>, "detail": <message>}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from federation.analytics import QueryError
from federation.errors import AuditTamperedError, RegistryError, SettingsError
from models.errors import FenjiError

__all__ = ["ERROR_RESPONSES", "Conflict", "ErrorBody", "Forbidden", "FourEyes", "JobCancelled", "JobFailed",
           "NotAuthenticated", "NotFound", "ServiceError", "Unavailable", "Unprocessable", "install_error_handlers",
           "status_of"]


class ServiceError(FenjiError):
    status_code = 500


class NotAuthenticated(ServiceError):
    status_code = 401


class Forbidden(ServiceError):
    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class FourEyes(Conflict):
    """A promotion needs two different commissioners."""


class Unavailable(ServiceError):
    status_code = 503


class Unprocessable(ServiceError):
    """A well-formed request the service cannot honour as asked (e.g. a job's DP on an engine that never sends it)."""

    status_code = 422


class JobCancelled(ServiceError):
    """Raised by a job's round callback when the job was cancelled: the run stops between rounds."""


class JobFailed(ServiceError):
    """A runner's account of a failed job. ``sites`` names the sites that refused or failed, each a
    ``{"site", "reason", "phase"}`` dict (``phase`` may be None); ``error`` is the underlying error's
    class name."""

    def __init__(self, reason: str, *, sites: list[dict[str, Any]] | None = None, error: str | None = None) -> None:
        super().__init__(reason)
        self.sites = list(sites or [])
        self.error = error or type(self).__name__


class ErrorBody(BaseModel):
    error: str
    detail: str


_FOREIGN = [(RegistryError, 503), (AuditTamperedError, 503), (SettingsError, 503), (QueryError, 422)]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No token, or not a token of this coordinator"},
    403: {"model": ErrorBody, "description": "The account's role may not call this endpoint"},
}


def status_of(exc: FenjiError) -> int:
    if isinstance(exc, ServiceError):
        return exc.status_code
    return next((status for cls, status in _FOREIGN if isinstance(exc, cls)), 500)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FenjiError)
    async def _refused(request: Request, exc: FenjiError) -> JSONResponse:
        status = status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=status, headers=headers)
