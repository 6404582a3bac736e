"""``create_app``: the key holder's HTTP API (``federation.keyholder_api`` names its paths and shapes).

- ``GET /v1/health`` and ``GET /v1/info`` are public: the signed public context is meant to be seen.
- ``POST /v1/decrypt`` needs ``Authorization: Bearer <token>`` (``fenji keyholder token issue``);
  the request's metadata travel in ``X-Fenji-Request``, the encrypted sum is the raw body, and the
  answer is the decrypted data as little-endian float64.
- ``POST /v1/anchor`` (same token) countersigns the caller's audit-log head (``federation.audit.Anchor``),
  recorded in the ledger; ``GET /v1/anchor`` returns the caller's latest anchor (404 if none). A head
  that contradicts an earlier anchor (lower position, or another head at the same one) is a 409.

Every refusal has one body, ``{"error": <class name>, "detail": <message>}``, and its status comes
from one table (``STATUS``)::

    401  NotAuthenticated                     no token, or one this key holder never issued (or revoked)
    403  NotEnoughSitesError, CohortError     the claimed cohort may not be decrypted
    409  ReplayError                          the query was decrypted before
    422  InvalidRequest, CiphertextError,     the request or the sum is not what the protocol allows
         AggregateCheckError
    500  any other FenjiError                 e.g. a broken ledger: nothing is decrypted then
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response

from federation.audit import ANCHOR_PATH, Anchor, AnchorRequest
from federation.keyholder_api import (
    DECRYPT_PATH,
    INFO_PATH,
    REQUEST_HEADER,
    DecryptRequest,
    KeyHolderInfo,
    decode_request,
)
from keyholder.errors import (
    AggregateCheckError,
    CiphertextError,
    CohortError,
    NotEnoughSitesError,
    ReplayError,
    RoleError,
)
from keyholder.key_holder import KeyHolder
from models.errors import FenjiError, first_line

__all__ = ["HEALTH_PATH", "STATUS", "InvalidRequest", "NotAuthenticated", "create_app"]

HEALTH_PATH = "/v1/health"
OCTET_STREAM = "application/octet-stream"


class NotAuthenticated(FenjiError):
    """A decryption asked for without a valid bearer token."""


class InvalidRequest(FenjiError):
    """The ``X-Fenji-Request`` header is missing or not a ``DecryptRequest``."""


# Most specific first: the first class an error is an instance of gives its status.
STATUS: list[tuple[type[FenjiError], int]] = [
    (NotAuthenticated, 401),
    (NotEnoughSitesError, 403),
    (RoleError, 403),
    (CohortError, 403),
    (ReplayError, 409),
    (InvalidRequest, 422),
    (CiphertextError, 422),
    (AggregateCheckError, 422),
]

_REFUSALS = {status: {"description": "Refused", "content": {"application/json": {"example": {
    "error": "NotEnoughSitesError", "detail": "refusing to decrypt a sum over 2 site(s)…"}}}}
    for status in (401, 403, 409, 422)}


def status_of(exc: FenjiError) -> int:
    return next((status for cls, status in STATUS if isinstance(exc, cls)), 500)


def _key_holder(request: Request) -> KeyHolder:
    return request.app.state.key_holder


KeyHolderDep = Annotated[KeyHolder, Depends(_key_holder)]


def _caller(request: Request, key_holder: KeyHolderDep,
            authorization: Annotated[str | None, Header(description="Bearer <token>")] = None) -> str:
    """The caller's name; a failed attempt is written to the ledger (never the token itself)."""
    scheme, _, token = (authorization or "").partition(" ")
    caller = key_holder.state.caller_of(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
    if caller is None:
        reason = "no bearer token" if not authorization else "unknown or revoked token"
        client = request.client.host if request.client else None
        key_holder.state.ledger.append(actor="unknown", action="unauthenticated", reason=reason,
                                       path=request.url.path, client=client)
        raise NotAuthenticated(f"{reason}: a caller of the key holder needs a token from "
                               "`fenji keyholder token issue`")
    return caller


def _decrypting(key_holder: KeyHolderDep, caller: Annotated[str, Depends(_caller)]) -> str:
    """A caller whose token's role may decrypt (checked before the request is even read)."""
    key_holder.state.require_role(caller, "decrypt")
    return caller


def _anchoring(key_holder: KeyHolderDep, caller: Annotated[str, Depends(_caller)]) -> str:
    key_holder.state.require_role(caller, "anchor")
    return caller


def _decrypt_request(header: Annotated[str | None, Header(alias=REQUEST_HEADER, description=(
        "The DecryptRequest as base64url-encoded JSON."))] = None) -> DecryptRequest:
    if not header:
        raise InvalidRequest(f"missing the {REQUEST_HEADER} header (the DecryptRequest, base64url JSON)")
    try:
        return decode_request(header)
    except ValueError as exc:  # bad base64, bad UTF-8, bad JSON, or a field out of range (pydantic)
        raise InvalidRequest(f"the {REQUEST_HEADER} header is not a valid DecryptRequest: {first_line(exc)}") from exc


async def _body(request: Request) -> bytes:
    return await request.body()


def create_app(key_holder: KeyHolder) -> FastAPI:
    """The key holder's API over ``key_holder`` (its rules, state folder and lock)."""
    app = FastAPI(title="Fenji key holder", version="1", docs_url=None, redoc_url=None,
                  description="Decrypts sums over enough enrolled sites, for authenticated callers only.")
    app.state.key_holder = key_holder
    keyholder_id = key_holder.state.keyholder_id

    @app.exception_handler(FenjiError)
    async def _refused(request: Request, exc: FenjiError) -> JSONResponse:
        status = status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=status, headers=headers)

    @app.get(HEALTH_PATH, summary="Whether the key holder is up, and which one it is")
    def health() -> dict[str, str]:
        return {"status": "ok", "keyholder": keyholder_id}

    @app.get(INFO_PATH, response_model=KeyHolderInfo, summary="The signed public context and the min-sites rule")
    def info(kh: KeyHolderDep) -> KeyHolderInfo:
        return kh.info()

    # A plain ``def``: decryption is CPU work and runs in the threadpool; KeyHolder serialises it.
    @app.post(DECRYPT_PATH, response_class=Response, responses={
        200: {"content": {OCTET_STREAM: {}}, "description": "The decrypted data, float64 little-endian"},
        **_REFUSALS}, openapi_extra={"requestBody": {"required": True, "content": {OCTET_STREAM: {}}}},
        summary="Decrypt an encrypted sum, if every rule of the key holder holds")
    def decrypt(kh: KeyHolderDep, caller: Annotated[str, Depends(_decrypting)],
                request: Annotated[DecryptRequest, Depends(_decrypt_request)],
                body: Annotated[bytes, Depends(_body)]) -> Response:
        values = kh.decrypt_aggregate(body, request, caller=caller)
        return Response(values.astype("<f8").tobytes(), media_type=OCTET_STREAM)

    @app.post(ANCHOR_PATH, response_model=Anchor, responses={401: _REFUSALS[401], 403: _REFUSALS[403], 409: _REFUSALS[409]},
              summary="Countersign the caller's audit-log head (ledgered)")
    def anchor(kh: KeyHolderDep, caller: Annotated[str, Depends(_anchoring)], body: AnchorRequest) -> Anchor:
        return kh.state.anchor(caller, body.seq, body.head, body.entries)

    @app.get(ANCHOR_PATH, response_model=Anchor, responses={401: _REFUSALS[401], 404: {"description": "No anchor"}},
             summary="The caller's latest countersigned audit-log head")
    def latest_anchor(kh: KeyHolderDep, caller: Annotated[str, Depends(_caller)]) -> Anchor | JSONResponse:
        found = kh.state.latest_anchor(caller)
        if found is None:
            return JSONResponse({"error": "NoAnchor", "detail": f"no anchor for {caller} yet"}, status_code=404)
        return found

    return app
