"""What the API takes and returns (never a storage row or an MLflow object)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from coordinator.service.access import Role
from coordinator.service.db import Account, Approval, Promotion

__all__ = ["AccountCreate", "AccountIssued", "AccountPublic", "ApprovalPublic", "AuditEntry", "AuditPage",
           "ChangeResult", "Health", "PromotionPublic", "ReasonBody", "RollbackBody", "TaskList", "VerifyResult"]


def _storable(text: str) -> str:
    """Text every database stores as given: no NUL, no lone surrogate."""
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    text.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError, a ValueError
    return text


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200,
                                        pattern=r"^[^\x00-\x1f\x7f]+$"), AfterValidator(_storable)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=2000),
                   AfterValidator(_storable)]


class Health(BaseModel):
    status: str


class AccountPublic(BaseModel):
    id: int
    name: str
    role: Role
    created_at: str
    revoked_at: str | None = None

    @classmethod
    def of(cls, account: Account) -> AccountPublic:
        return cls(id=account.id, name=account.name, role=Role(account.role), created_at=account.created_at,
                   revoked_at=account.revoked_at)


class AccountCreate(BaseModel):
    name: Name = Field(description="Who holds it, e.g. 'Commissioner Li'")
    role: Role


class AccountIssued(BaseModel):
    """A new account: ``token`` is shown this once and stored nowhere (only its SHA-256)."""

    account: AccountPublic
    token: str


class TaskList(BaseModel):
    tasks: list[str]


class ReasonBody(BaseModel):
    reason: Reason = Field(description="Why, in the commissioner's words (audited)")


class RollbackBody(ReasonBody):
    version: str = Field(pattern=r"^[0-9]{1,9}$", description="An earlier approved version")


class ApprovalPublic(BaseModel):
    account: str
    reason: str
    at: str


class PromotionPublic(BaseModel):
    id: int
    kind: str = Field(description="promotion (two approvals) or rollback (one)")
    task: str
    version: str
    alias: str
    status: str = Field(description="pending (waits for a second commissioner), applied")
    created_at: str
    applied_at: str | None
    previous_version: str | None
    approvals: list[ApprovalPublic]

    @classmethod
    def of(cls, promotion: Promotion, approvals: list[tuple[Approval, str]]) -> PromotionPublic:
        return cls(id=promotion.id, kind=promotion.kind, task=promotion.task, version=promotion.version,
                   alias=promotion.alias, status=promotion.status, created_at=promotion.created_at,
                   applied_at=promotion.applied_at, previous_version=promotion.previous_version,
                   approvals=[ApprovalPublic(account=name, reason=a.reason, at=a.at) for a, name in approvals])


class ChangeResult(BaseModel):
    promotion: PromotionPublic
    anchored_seq: int | None = Field(description="The audit entry the key holder countersigned after this "
                                                 "change (null: not anchored now; the next anchor covers it)")


class AuditEntry(BaseModel):
    seq: int
    at: str
    actor: str
    action: str
    details: dict[str, Any]
    prev: str
    hash: str


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    total: int


class VerifyResult(BaseModel):
    ok: bool
    entries: int = 0
    anchors: int = 0
    anchored_seq: int = 0
    keyholder: str = ""
    notes: list[str] = Field(default_factory=list)
    error: str | None = None
