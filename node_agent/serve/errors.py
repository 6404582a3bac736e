"""Errors of the scoring API, each mapped to one HTTP status by one handler.

    FenjiError (models.errors)
    └── ServeError                 500
        ├── NotAuthenticated       401   no token, or a token this site never issued (or revoked)
        ├── Forbidden              403   the token's role may not call this endpoint
        ├── NotFound               404   unknown decision, token or task
        ├── Conflict               409
        │   ├── IncompatibleAdvisor      a new advisor reads other features than the one in use
        │   ├── LastSiteAdmin            revoking it would lock every site admin out
        │   └── NoProvider               the node agent was started without a model provider
        ├── PayloadTooLarge        413   a batch or body over the limit
        └── Unavailable            503
            ├── AdvisorFailed            the advisor raised, or gave a malformed answer
            └── StoreBusy                the site's DuckDB file stayed locked (e.g. training reads it)

Every error body has one shape, ``{"detail": [ErrorItem, ...]}``: a 422 names every offending field
(and, in a batch, the patient's index); any other error is one item without a field. Foreign
exceptions (DuckDB, the advisor's own) are translated where they are caught, ``from exc``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.errors import FenjiError
from node_agent.serve.access import allowed_methods

__all__ = [
    "AdvisorFailed", "Conflict", "ErrorBody", "ErrorItem", "Forbidden", "IncompatibleAdvisor",
    "LastSiteAdmin", "NoProvider", "NotAuthenticated", "NotFound", "PayloadTooLarge", "ServeError",
    "StoreBusy", "Unavailable", "install_error_handlers",
]

log = logging.getLogger("fenji.serve")


class ServeError(FenjiError):
    status_code = 500
    type = "error"


class NotAuthenticated(ServeError):
    status_code, type = 401, "not_authenticated"


class Forbidden(ServeError):
    status_code, type = 403, "forbidden"


class NotFound(ServeError):
    status_code, type = 404, "not_found"


class Conflict(ServeError):
    status_code, type = 409, "conflict"


class IncompatibleAdvisor(Conflict):
    type = "incompatible_advisor"


class LastSiteAdmin(Conflict):
    type = "last_site_admin"


class NoProvider(Conflict):
    type = "no_provider"


class PayloadTooLarge(ServeError):
    status_code, type = 413, "payload_too_large"


class Unavailable(ServeError):
    status_code, type = 503, "unavailable"


class AdvisorFailed(Unavailable):
    type = "advisor_failed"


class StoreBusy(Unavailable):
    type = "store_busy"


class ErrorItem(BaseModel):
    type: str = Field(description="machine-readable kind, e.g. 'less_than_equal', 'missing', 'forbidden'")
    msg: str = Field(description="English message")
    text: dict[str, str] = Field(description="the message per language ('zh', 'en'), for the page")
    loc: list[str | int] = Field(default_factory=list, description="where: ['body', 'patients', 3, 'spo2']")
    field: str | None = Field(None, description="the offending field's name, if the error is about one")
    patient: int | None = Field(None, description="index of the offending patient in a batch")


class ErrorBody(BaseModel):
    detail: list[ErrorItem]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No token, or not a token of this site"},
    403: {"model": ErrorBody, "description": "The token's role may not call this endpoint"},
    422: {"model": ErrorBody, "description": "Invalid input: every offending field is named"},
}

# Chinese messages for the validation errors a doctor can cause; {ctx} keys come from pydantic.
_ZH = {
    "missing": "必填项，未填写",
    "extra_forbidden": "不认识的字段",
    "less_than_equal": "不能大于 {le}",
    "greater_than_equal": "不能小于 {ge}",
    "less_than": "必须小于 {lt}",
    "greater_than": "必须大于 {gt}",
    "finite_number": "应为有限的数字",
    "float_type": "应为数字",
    "float_parsing": "应为数字",
    "int_type": "应为整数",
    "bool_type": "应为 是/否",
    "string_type": "应为文本",
    "literal_error": "只能是：{expected}",
    "enum": "只能是：{expected}",
    "json_invalid": "请求不是合法的 JSON",
    "model_type": "应为一个对象",
    "model_attributes_type": "应为一个对象",
    "dict_type": "应为一个对象",
    "list_type": "应为列表",
    "too_short": "至少需要 {min_length} 项",
    "too_long": "最多 {max_length} 项",
    "string_too_long": "最多 {max_length} 个字符",
    "string_too_short": "至少 {min_length} 个字符",
    "string_pattern_mismatch": "格式不正确",
    "referred_tier_required": "选择转诊时必须填写转诊去向",
    "referred_tier_forbidden": "在本院处理时不能填写转诊去向",
    "outcome_empty": "至少填写一项结局",
}


def _zh(kind: str, msg: str, ctx: dict[str, Any] | None) -> str:
    template = _ZH.get(kind)
    if template is None:
        return f"输入无效：{msg}"
    shown = {k: f"{v:g}" if isinstance(v, float) else str(v).replace(" or ", " 或 ") for k, v in (ctx or {}).items()}
    try:
        return template.format(**shown)
    except (KeyError, IndexError):
        return template.split("：")[0]


def validation_items(errors: list[dict[str, Any]]) -> list[ErrorItem]:
    """Pydantic's errors as ErrorItems, naming the field and the batch index of each."""
    items = []
    for err in errors:
        loc = [part if isinstance(part, (str, int)) else str(part) for part in err.get("loc", ())]
        rest, patient = (loc[1:] if loc[:1] in (["body"], ["query"], ["path"]) else loc), None
        if len(rest) >= 2 and rest[0] == "patients" and isinstance(rest[1], int):
            patient, rest = rest[1], rest[2:]
        elif rest[:1] == ["inputs"]:
            rest = rest[1:]
        field = rest[0] if rest and isinstance(rest[0], str) else None
        msg = str(err.get("msg", "invalid input"))
        kind = str(err.get("type", "value_error"))
        items.append(ErrorItem(type=kind, msg=msg, text={"zh": _zh(kind, msg, err.get("ctx")), "en": msg},
                               loc=loc, field=field, patient=patient))
    return items


def error_response(status: int, items: list[ErrorItem], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(detail=items).model_dump(mode="json"), status_code=status, headers=headers)


def _one(kind: str, msg: str, zh: str | None = None) -> list[ErrorItem]:
    return [ErrorItem(type=kind, msg=msg, text={"zh": zh or msg, "en": msg})]


_ZH_STATUS = {401: "请先登录（需要有效的访问令牌）", 403: "当前账号无权执行此操作", 404: "未找到",
              405: "不支持的请求方法", 409: "操作冲突", 413: "请求过大", 503: "服务暂时不可用，请稍后再试"}


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to the one body shape; nothing answers with a traceback."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_items(list(exc.errors())))

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        if exc.status_code >= 500:
            log.warning("%s: %s", exc.type, exc, exc_info=exc.__cause__)
        return error_response(exc.status_code, _one(exc.type, str(exc), _ZH_STATUS.get(exc.status_code)), headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's only 400 here: a body that is not even text (not UTF-8)
            msg = "the body is not valid JSON (UTF-8)"
            text = {"zh": _ZH["json_invalid"], "en": msg}
            return error_response(422, [ErrorItem(type="json_invalid", msg=msg, text=text, loc=["body"])])
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # Starlette names only the first route's method; name every one
            headers["Allow"] = ", ".join(allowed_methods(request.url.path)) or headers.get("Allow", "")
        return error_response(exc.status_code, _one(f"http_{exc.status_code}", str(exc.detail),
                                                    _ZH_STATUS.get(exc.status_code)), headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        log.error("unexpected error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
        return error_response(500, _one("internal_error", f"unexpected error; the node agent's log has "
                                        f"the details under error id {error_id}",
                                        f"系统内部错误，错误编号 {error_id}，请联系站点管理员"))
