"""``/models/{task}/versions/{version}/tier-policy``: a version's tier policy, and its edit into a new
version (which then needs two commissioners' approvals, as any version)."""

from __future__ import annotations

from coordinator.service import tier_policies
from coordinator.service.chain import anchor_head
from coordinator.service.deps import Caller, CoordinatorDep, Db, api_router
from coordinator.service.errors import ErrorBody, NotFound
from coordinator.service.routes.models import Task, Version
from coordinator.service.schemas import TierPolicyEdit, TierPolicyEdited, TierPolicyView

router = api_router(tags=["tier policy"])
PATH = "/models/{task}/versions/{version}/tier-policy"
_NOT_FOUND = {404: {"model": ErrorBody, "description": "No such version, or it has no serving bundle"}}
_EDIT_ERRORS = _NOT_FOUND | {
    409: {"model": ErrorBody, "description": "Not the task whose tier policy the clinics apply, or no change"},
    503: {"model": ErrorBody, "description": "The registry or the audit chain refused; nothing registered"}}


@router.get(PATH, responses=_NOT_FOUND, summary="The tier policy inside the version's bundle")
def read_policy(task: Task, version: Version, coordinator: CoordinatorDep) -> TierPolicyView:
    view, policy = tier_policies.read(coordinator.registry, task, version)
    return TierPolicyView(task=task, version=view.version, policy=policy, bundle_sha256=view.bundle_sha256,
                          derived_from=view.derived_from, applies_at_clinics=task == tier_policies.POLICY_TASK)


@router.post(PATH, status_code=201, responses=_EDIT_ERRORS,
             summary="Edit the tier policy: registers a new version, to be approved by two commissioners")
def edit_policy(task: Task, version: Version, body: TierPolicyEdit, caller: Caller, session: Db,
                coordinator: CoordinatorDep) -> TierPolicyEdited:
    derived = tier_policies.edit(session, coordinator.registry, caller, task=task, version=version,
                                 policy=body.policy, reason=body.reason)
    anchor = anchor_head(coordinator.sessions, coordinator.anchors)
    view = coordinator.registry.version(task, derived.version)
    if view is None:  # registered and audited a moment ago
        raise NotFound(f"{derived.name} version {derived.version} vanished from the registry")
    return TierPolicyEdited(version=view, base_version=derived.base_version, previous=derived.previous,
                            policy=derived.policy, anchored_seq=anchor.seq if anchor else None)
