"""The SDK's errors: each HTTP refusal of the coordinator as its own class, carrying the server's message.

    FenjiError (models.errors)
    └── SdkError                     a refusal without a class of its own (5xx), or no connection
        ├── NotAuthenticated   401   no token, or one this coordinator never issued (or revoked)
        ├── Forbidden          403   the account's role may not call this endpoint
        ├── NotFound           404   no such task, version, job or query
        ├── Conflict           409   the job has ended already; a second approval by the same person
        ├── Invalid            422   a body the server refused (a query's column the task lacks)
        ├── JobFailed                a job or a query that ended failed (``reason`` says why)
        └── WaitTimeout              ``wait`` gave up before the job ended
"""

from __future__ import annotations

from typing import Any

import httpx

from models.errors import FenjiError

__all__ = ["Conflict", "Forbidden", "Invalid", "JobFailed", "NotAuthenticated", "NotFound", "SdkError",
           "WaitTimeout", "error_of"]


class SdkError(FenjiError):
    """A refusal of the coordinator; ``status`` is the HTTP status (0: no reply), ``error`` the server's
    error class name."""

    def __init__(self, message: str, *, status: int = 0, error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


class NotAuthenticated(SdkError):
    pass


class Forbidden(SdkError):
    pass


class NotFound(SdkError):
    pass


class Conflict(SdkError):
    pass


class Invalid(SdkError):
    pass


class JobFailed(SdkError):
    """A job or query that ended ``failed``; ``record`` is what the server said of it."""

    def __init__(self, message: str, *, record: dict[str, Any]) -> None:
        super().__init__(message, error=record.get("error"))
        self.record = record


class WaitTimeout(SdkError):
    pass


_BY_STATUS = {401: NotAuthenticated, 403: Forbidden, 404: NotFound, 409: Conflict, 422: Invalid}


def _detail(response: httpx.Response) -> tuple[str, str | None]:
    try:
        body = response.json()
    except ValueError:
        return response.text or response.reason_phrase, None
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI's validation errors: where, and what
        detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail)
    return str(detail), body.get("error") if isinstance(body, dict) else None


def error_of(response: httpx.Response) -> SdkError:
    """The SDK error of a refused response, with the server's message."""
    message, error = _detail(response)
    cls = _BY_STATUS.get(response.status_code, SdkError)
    return cls(f"{response.request.method} {response.request.url.path}: {response.status_code} {message}",
               status=response.status_code, error=error)
