"""What the API takes and returns (never a storage row or an MLflow object)."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StringConstraints,
    field_validator,
)

from coordinator.service.access import Role
from coordinator.service.db import Account, Approval, Job, Promotion
from coordinator.service.versions import VersionView
from models.policy import TierPolicy

__all__ = ["AccountCreate", "AccountIssued", "AccountPublic", "ApprovalPublic", "AuditEntry", "AuditPage",
           "ChangeResult", "Health", "JobCreate", "JobPublic", "PromotionPublic", "ReasonBody", "RollbackBody", "TaskList", "TierPolicyEdit", "TierPolicyEdited",
           "TierPolicyView", "VerifyResult"]


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


class TierPolicyEdit(ReasonBody):
    policy: TierPolicy = Field(description="The new thresholds: tertiary and county rules, critical_risk")

    @field_validator("policy")
    @classmethod
    def _storable_name(cls, policy: TierPolicy) -> TierPolicy:
        if not 1 <= len(policy.name) <= 200 or any(ord(c) < 0x20 or c == "\x7f" for c in policy.name):
            raise ValueError("the policy's name must be 1-200 printable characters")
        _storable(policy.name)
        return policy


class TierPolicyView(BaseModel):
    task: str
    version: str
    policy: TierPolicy
    bundle_sha256: str = Field(description="The bundle the policy is part of (what the nodes verify)")
    derived_from: str | None = Field(description="The version it was derived from by a tier-policy edit")
    applies_at_clinics: bool = Field(description="True for the task whose production policy the clinics apply "
                                                 "(referral_risk); other bundles carry one unused")


class TierPolicyEdited(BaseModel):
    """The new version: not in production until two commissioners approve it."""

    version: VersionView
    base_version: str
    previous: TierPolicy
    policy: TierPolicy
    anchored_seq: int | None = Field(description="The audit entry the key holder countersigned after this "
                                                 "change (null: not anchored now; the next anchor covers it)")


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


class JobCreate(BaseModel):
    task: str = Field(pattern=r"^[a-z][a-z0-9_]{0,99}$", description="A built-in task, e.g. triage, diagnosis")
    rounds: int = Field(ge=1, le=1000, description="Federated training rounds")
    dp_epsilon: float | None = Field(None, gt=0, le=1000, description="Ask the sites for DP-SGD at this epsilon "
                                     "per run (each site books it in its own ledger); none: the sites' own policy. "
                                     "Refused (422) on Flower's deployment engine, where each site's own DP policy "
                                     "always applies")
    personalisation: bool = Field(True, description="Each site fits a personalised model on its own rows at the "
                                  "end and reports its metrics; false: the sites skip that step")


class SiteProblem(BaseModel):
    site: str = Field(description="The site's id, or 'node <n>' before the run learnt it")
    reason: str
    phase: str | None = None


def _finite(value: Any) -> Any:
    """JSON has no NaN: a metric a site could not compute (one class only) is shown as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class JobPublic(BaseModel):
    id: int
    task: str
    rounds: int
    dp_epsilon: float | None
    personalisation: bool
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    submitted_by: str
    submitted_at: str
    started_at: str | None
    finished_at: str | None
    rounds_done: int
    progress: float = Field(description="rounds done / rounds")
    cancel_requested_by: str | None = Field(description="A running job stops after its current round")
    history: list[dict[str, float | None]] = Field(description="Each completed round's metrics (over the sites)")
    result: dict[str, Any] | None = Field(description="Per-site released metrics, replies left out, the registered "
                                                      "version")
    error: str | None
    reason: str | None
    failed_sites: list[SiteProblem] = Field(description="The sites that refused or failed, and why")
    engine_run_id: str | None = Field(None, description="The engine's own id of the job's run, once it started "
                                      "(Flower's run id on the deployment engine, e.g. for `flwr log`)")

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        return cls(id=job.id, task=job.task, rounds=job.rounds, dp_epsilon=job.dp_epsilon,
                   personalisation=job.personalisation, status=job.status, submitted_by=job.submitted_by,
                   submitted_at=job.submitted_at, started_at=job.started_at, finished_at=job.finished_at,
                   rounds_done=job.rounds_done, progress=job.rounds_done / job.rounds if job.rounds else 0.0,
                   cancel_requested_by=job.cancel_requested_by, history=_finite(json.loads(job.history_json)),
                   result=_finite(json.loads(job.result_json)) if job.result_json else None, error=job.error,
                   reason=job.reason, failed_sites=[SiteProblem(**s) for s in json.loads(job.sites_json)],
                   engine_run_id=job.engine_run.run_id if job.engine_run else None)
