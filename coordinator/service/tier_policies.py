"""Tier-policy edits: a commissioner's new thresholds become a new version of the model, which
reaches the clinics only as any version does, under four eyes (``governance.approve``).

The clinics' nodes apply the tier policy inside the production *referral-risk* bundle (the
advisor reads it from that model: ``models.advisor.Advisor.from_folders``), so edits are made to
that task's versions; the policy of any version can be read.

The new version is registered first, then its audit entry (old and new thresholds, editor, reason)
is written and committed; if that fails, the version is deleted again: it never stays unaudited.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from coordinator.derived_versions import (
    DerivedVersion,
    derive_tier_policy_version,
    discard_version,
    version_tier_policy,
)
from coordinator.service import chain
from coordinator.service.db import Account
from coordinator.service.errors import Conflict, NotFound
from coordinator.service.versions import ModelRegistry, VersionView
from models.errors import BundleError, PolicyError, first_line
from models.policy import TierPolicy

__all__ = ["POLICY_TASK", "edit", "read"]

POLICY_TASK = "referral_risk"


def read(registry: ModelRegistry, task: str, version: str) -> tuple[VersionView, TierPolicy]:
    """The version and the tier policy in its bundle.

    Raises
    ------
    NotFound
        If the version does not exist or has no bundle.
    """
    view = registry.existing(task, version)
    try:
        return view, version_tier_policy(task, version, tracking_uri=registry.tracking_uri)
    except BundleError as exc:
        raise NotFound(str(exc)) from exc


def edit(session: Session, registry: ModelRegistry, account: Account, *, task: str, version: str,
         policy: TierPolicy, reason: str) -> DerivedVersion:
    """Register ``version`` with ``policy`` as a new version, audited; it is not promoted.

    Raises
    ------
    Conflict
        If the task's tier policy is not the one the clinics apply, or ``policy`` is ``version``'s already.
    NotFound
        If the version does not exist or has no bundle.
    """
    if task != POLICY_TASK:
        raise Conflict(f"the clinics apply the tier policy of the {POLICY_TASK} model, not {task}'s: edit a "
                       f"{POLICY_TASK} version")
    base = registry.existing(task, version)
    editor = account.name
    session.rollback()  # release SQLite's write lock while MLflow works (its own store)
    try:
        derived = derive_tier_policy_version(task, version, policy, tracking_uri=registry.tracking_uri,
                                             editor=editor, reason=reason)
    except BundleError as exc:
        raise NotFound(str(exc)) from exc
    except PolicyError as exc:
        raise Conflict(first_line(exc)) from exc
    try:
        chain.append(session, actor=editor, action="tier-policy-edit", task=task, model=derived.name,
                     version=derived.version, base_version=version, reason=reason,
                     previous_policy=derived.previous.model_dump(), policy=derived.policy.model_dump(),
                     bundle_sha256=derived.bundle_sha256, base_bundle_sha256=base.bundle_sha256)
        session.commit()
    except BaseException:
        session.rollback()
        discard_version(task, derived.version, tracking_uri=registry.tracking_uri)
        raise
    return derived
