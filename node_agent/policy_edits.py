"""The site admin's edits of the policy file (``node_agent.policy``): approve and revoke plans and app
bundles, and set the policy's fields (``fenji node approve / revoke / approve-app / revoke-app /
policy``, ``node_agent.cli_policy``; the simulation calls them as every site's admin).

Each edit loads, changes and saves the policy under the site's policy lock, is validated in full before
the file is written (a bad value leaves the file as it was), and lands in the node's hash-chained audit
log with what it was before. An edit that cannot be audited is not made.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from federation.audit import AuditLog
from models.errors import first_line
from node_agent.budget import node_audit
from node_agent.errors import SiteDataError
from node_agent.policy import (
    AnalyticsPolicy,
    ApprovedApp,
    ApprovedPlan,
    PlanBounds,
    SitePolicy,
    describe_fab,
    fab_digest,
    load_site_policy,
    normal_digest,
    policy_lock,
    save_site_policy,
)

__all__ = ["ANALYTICS_KINDS", "POLICY_FIELDS", "approve_app", "approve_plan", "change_policy", "revoke_app",
           "revoke_plans"]

# The statistics query kinds a site may answer, as the policy's model names them (one list, not two).
ANALYTICS_KINDS: tuple[str, ...] = typing.get_args(typing.get_args(AnalyticsPolicy.model_fields["allowed"].annotation)[0])
# ``change_policy``'s field names -> their path in ``SitePolicy``.
POLICY_FIELDS = {
    "min_n": ("min_n",), "release_train_loss": ("release_train_loss",), "coarse_metrics": ("coarse_metrics",),
    "dp": ("dp", "enabled"), "dp_epsilon": ("dp", "epsilon_per_run"), "dp_delta": ("dp", "delta"),
    "dp_max_grad_norm": ("dp", "max_grad_norm"),
    "dp_budget": ("dp", "budget_epsilon"), "dp_period_days": ("dp", "period_days"),
    "analytics_dp_epsilon": ("analytics", "dp_epsilon"),
}


def _invalid(what: str, exc: ValidationError) -> SiteDataError:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or what
    return SiteDataError(f"invalid {what}: {where}: {error['msg']} (got {error.get('input')!r}); nothing was changed")


def _audit(site_dir: Path) -> AuditLog:
    """The node's audit log, checked before the policy changes: a change that cannot be audited is not made."""
    log = node_audit(site_dir)
    log.check_appendable()
    return log


def approve_plan(site_dir: Path, task: str, *, by: str, max_rounds: int | None = None,
                 max_local_epochs: int | None = None, max_learning_rate: float | None = None) -> tuple[str, ApprovedPlan]:
    """Put the task's plan on the site's approved list (or change its bounds); return its digest and entry."""
    from models.spec import load_task

    spec = load_task(task)
    given = {"max_rounds": max_rounds, "max_local_epochs": max_local_epochs, "max_learning_rate": max_learning_rate}
    try:
        bounds = PlanBounds(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise _invalid("plan bounds", exc) from exc
    with policy_lock(site_dir):  # load, change and save as one edit
        policy, log = load_site_policy(site_dir), _audit(site_dir)
        digest = policy.approve(spec, by=by, bounds=bounds)
        save_site_policy(site_dir, policy)
    plan = policy.approved_plans[digest]
    log.append(actor="site-admin", action="plan-approved", task=spec.name, family=plan.family, plan=digest,
               bounds=bounds.model_dump(), by=by)
    return digest, plan


def revoke_plans(site_dir: Path, *, by: str, task: str | None = None,
                 digest: str | None = None) -> dict[str, ApprovedPlan]:
    """Remove the plans of task ``task`` (all its versions), or the one plan whose digest starts with ``digest``."""
    if (task is None) == (digest is None):
        raise SiteDataError("give either --task or --digest (exactly one)")
    with policy_lock(site_dir):  # load, change and save as one edit
        policy = load_site_policy(site_dir)
        if task is not None:
            chosen = [d for d, plan in policy.approved_plans.items() if plan.task == task]
            if not chosen:
                raise SiteDataError(f"no approved plan for task {task!r} at this site")
        else:
            prefix = digest.strip().lower()  # type: ignore[union-attr]
            chosen = [d for d in policy.approved_plans if prefix and d.startswith(prefix)]
            if not chosen:
                raise SiteDataError(f"no approved plan has a digest starting with {digest!r} (see `fenji node policy`)")
            if len(chosen) > 1:
                raise SiteDataError(f"digest prefix {digest!r} matches {len(chosen)} plans "
                                    f"({', '.join(d[:12] for d in chosen)}): give more of it")
        log = _audit(site_dir)
        removed = {d: policy.approved_plans.pop(d) for d in chosen}
        save_site_policy(site_dir, policy)
    for d, plan in removed.items():
        log.append(actor="site-admin", action="plan-revoked", task=plan.task, plan=d, by=by)
    return removed


def _fab_bytes(fab: Path) -> bytes:
    """A FAB file's bytes, or the FAB Flower builds from an app folder (``flwr run <folder>`` sends the same bytes)."""
    if fab.is_dir():
        from flwr.cli.build import build_fab_from_disk

        try:
            return build_fab_from_disk(fab)
        except (ValueError, OSError) as exc:
            raise SiteDataError(f"cannot build a Flower app bundle from {fab}: {first_line(exc)}") from exc
    try:
        return fab.read_bytes()
    except OSError as exc:
        raise SiteDataError(f"cannot read the app bundle {fab}: {exc.strerror or exc}") from exc


def approve_app(site_dir: Path, *, by: str, fab: Path | None = None,
                digest: str | None = None) -> tuple[str, ApprovedApp]:
    """Put an app bundle on the site's approved list, by its file (or app folder) or by its SHA-256."""
    if (fab is None) == (digest is None):
        raise SiteDataError("give either --fab or --digest (exactly one)")
    app = version = ""
    if fab is not None:
        content = _fab_bytes(fab)
        app, version = describe_fab(content)
        digest = fab_digest(content)
    with policy_lock(site_dir):  # load, change and save as one edit
        policy, log = load_site_policy(site_dir), _audit(site_dir)
        digest = policy.approve_app(digest, by=by, app=app, version=version)  # type: ignore[arg-type]
        save_site_policy(site_dir, policy)
    log.append(actor="site-admin", action="app-approved", fab=digest, app=app, version=version, by=by)
    return digest, policy.approved_apps[digest]


def revoke_app(site_dir: Path, *, by: str, digest: str) -> tuple[str, ApprovedApp]:
    """Take the app bundle with this SHA-256 (all 64 digits) off the approved list."""
    digest = normal_digest(digest)
    with policy_lock(site_dir):  # load, change and save as one edit
        policy = load_site_policy(site_dir)
        if digest not in policy.approved_apps:
            raise SiteDataError(f"no approved app has digest {digest} (see `fenji node policy`)")
        log = _audit(site_dir)
        removed = policy.approved_apps.pop(digest)
        save_site_policy(site_dir, policy)
    log.append(actor="site-admin", action="app-revoked", fab=digest, app=removed.app, version=removed.version, by=by)
    return digest, removed


def _kinds(given: Sequence[str] | None, option: str) -> set[str]:
    """The query kinds named in ``given`` (``all``: every kind), or a ``SiteDataError`` naming the unknown one."""
    named = {kind.strip().lower() for kind in given or ()} - {""}
    if "all" in named:
        return set(ANALYTICS_KINDS)
    unknown = sorted(named - set(ANALYTICS_KINDS))
    if unknown:
        raise SiteDataError(f"{option}: unknown statistics query kind {unknown[0]!r} (kinds: "
                            f"{', '.join(ANALYTICS_KINDS)}, or all); nothing was changed")
    return named


def _allowed_kinds(current: list[str], allow: Sequence[str] | None, deny: Sequence[str] | None) -> list[str]:
    """``current`` with the kinds of ``allow`` added (in the policy's order) and those of ``deny`` taken out."""
    added, removed = _kinds(allow, "--analytics-allow"), _kinds(deny, "--analytics-deny")
    if added & removed:
        raise SiteDataError(f"{', '.join(sorted(added & removed))} both allowed and denied: say one; nothing was changed")
    # The kinds already allowed keep their place: setting what is set changes (and audits) nothing.
    return [k for k in current if k not in removed] + [k for k in ANALYTICS_KINDS if k in added and k not in current]


def change_policy(site_dir: Path, *, by: str, analytics_allow: Sequence[str] | None = None,
                  analytics_deny: Sequence[str] | None = None, **changes: Any) -> dict[str, tuple[Any, Any]]:
    """Set the given policy fields (``POLICY_FIELDS`` names; ``None`` leaves one as it is), allow the
    statistics query kinds of ``analytics_allow`` and stop answering those of ``analytics_deny``
    (``ANALYTICS_KINDS``, or ``all``); return ``{field: (old, new)}`` of what changed.

    Nothing is written unless the whole new policy is valid; the change is audited as ``policy-changed``
    with the old and new values.

    Raises
    ------
    SiteDataError
        An invalid value, an unknown query kind, or a kind both allowed and denied (nothing changed).
    """
    with policy_lock(site_dir):  # load, change and save as one edit
        policy = load_site_policy(site_dir)
        data = policy.model_dump()
        diff: dict[str, tuple[Any, Any]] = {}
        for name, value in changes.items():
            if value is None:
                continue
            *parents, leaf = POLICY_FIELDS[name]
            holder = data
            for part in parents:
                holder = holder[part]
            if holder[leaf] != value:
                diff[".".join(POLICY_FIELDS[name])] = (holder[leaf], value)
                holder[leaf] = value
        if analytics_allow is not None or analytics_deny is not None:
            old = data["analytics"]["allowed"]
            new = _allowed_kinds(old, analytics_allow, analytics_deny)
            if new != old:
                diff["analytics.allowed"] = (old, new)
                data["analytics"]["allowed"] = new
        if not diff:
            return diff
        try:
            new_policy = SitePolicy.model_validate(data)
        except ValidationError as exc:
            raise _invalid("policy value", exc) from exc
        log = _audit(site_dir)
        save_site_policy(site_dir, new_policy)
    log.append(actor="site-admin", action="policy-changed", old={k: v[0] for k, v in diff.items()},
               new={k: v[1] for k, v in diff.items()}, by=by)
    return diff
