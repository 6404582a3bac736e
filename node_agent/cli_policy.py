"""``fenji node approve / revoke / approve-app / revoke-app / policy / status``: the site admin edits and
reads the site's line.

The policy file (``node_agent.policy``) is changed only here (and by the simulation acting as every
site's admin). Each change is validated in full before the file is written, so a bad value leaves
the file as it was, and each change lands in the node's hash-chained audit log with what it was
before. ``register`` adds the six commands to ``node_app``.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from federation.audit import AuditLog
from federation.errors import AuditTamperedError
from models.errors import first_line
from node_agent.budget import node_audit, spent
from node_agent.errors import SiteDataError
from node_agent.paths import site_folder, store_errors
from node_agent.policy import (
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
from node_agent.store import DB_NAME

__all__ = ["approve_app", "approve_plan", "change_policy", "register", "revoke_app", "revoke_plans"]

console = Console()
SiteDir = Annotated[Path, typer.Option(help="The site's folder (policy.json and node-audit.jsonl are kept there).")]
By = Annotated[str | None, typer.Option("--by", help="Who makes the change (default: the logged-in user).")]
STATUS_ENTRIES = 10
COARSE_HELP = ("Release held-out metrics on count-sized grids (no metric pins a count more finely than the count "
               "rule; AUROC and kappa about small classes withheld).")
# Option name -> (field path in SitePolicy) for `fenji node policy`.
_POLICY_FIELDS = {
    "min_n": ("min_n",), "release_train_loss": ("release_train_loss",), "coarse_metrics": ("coarse_metrics",),
    "dp": ("dp", "enabled"), "dp_epsilon": ("dp", "epsilon_per_run"), "dp_delta": ("dp", "delta"),
    "dp_max_grad_norm": ("dp", "max_grad_norm"),
    "dp_budget": ("dp", "budget_epsilon"), "dp_period_days": ("dp", "period_days"),
}


def _who(by: str | None) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a container
        return "site admin"


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


def change_policy(site_dir: Path, *, by: str, **changes: Any) -> dict[str, tuple[Any, Any]]:
    """Set the given policy fields (``_POLICY_FIELDS`` names; ``None`` leaves one as it is); return
    ``{field: (old, new)}`` of what changed. Nothing is written unless the whole new policy is valid."""
    with policy_lock(site_dir):  # load, change and save as one edit
        policy = load_site_policy(site_dir)
        data = policy.model_dump()
        diff: dict[str, tuple[Any, Any]] = {}
        for name, value in changes.items():
            if value is None:
                continue
            *parents, leaf = _POLICY_FIELDS[name]
            holder = data
            for part in parents:
                holder = holder[part]
            if holder[leaf] != value:
                diff[".".join(_POLICY_FIELDS[name])] = (holder[leaf], value)
                holder[leaf] = value
        if not diff:
            return diff
        try:
            new = SitePolicy.model_validate(data)
        except ValidationError as exc:
            raise _invalid("policy value", exc) from exc
        log = _audit(site_dir)
        save_site_policy(site_dir, new)
    log.append(actor="site-admin", action="policy-changed", old={k: v[0] for k, v in diff.items()},
               new={k: v[1] for k, v in diff.items()}, by=by)
    return diff


def _bounds_text(bounds: PlanBounds) -> str:
    return (f"≤ {bounds.max_rounds} rounds, ≤ {bounds.max_local_epochs} local epochs, "
            f"learning rate ≤ {bounds.max_learning_rate:g}")


def _plans_table(policy: SitePolicy) -> Table:
    table = Table(title="Approved training plans", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption="bounds: most rounds / local epochs / highest learning rate")
    for column in ("task", "family", "plan", "bounds"):
        table.add_column(column, no_wrap=True)
    table.add_column("approved by", min_width=8)
    table.add_column("on (UTC)", no_wrap=True)
    for digest, plan in sorted(policy.approved_plans.items(), key=lambda item: (item[1].task, item[0])):
        bounds = plan.bounds
        table.add_row(escape(plan.task), plan.family, digest[:12],
                      f"{bounds.max_rounds}/{bounds.max_local_epochs}/{bounds.max_learning_rate:g}",
                      escape(plan.approved_by), plan.approved_at[:10])
    return table


def _dp_text(policy: SitePolicy) -> str:
    dp = policy.dp
    if not dp.enabled:
        return "off (updates leave without the site's DP noise)"
    return (f"on: epsilon {dp.epsilon_per_run:g} per run, delta {dp.delta:g}, clipping {dp.max_grad_norm:g}; "
            f"budget epsilon {dp.budget_epsilon:g} per {dp.period_days} days")


def _show_policy(policy: SitePolicy) -> None:
    if policy.approved_plans:
        console.print(_plans_table(policy))
    else:
        console.print("Approved training plans: [bold]none[/] (every job is refused; `fenji node approve`)")
    if policy.approved_apps:
        for digest, app in sorted(policy.approved_apps.items(), key=lambda item: item[1].approved_at):
            console.print(f"Approved app: {digest} {escape(app.app or '(by digest)')} {escape(app.version)} "
                          f"({escape(app.approved_by)}, {app.approved_at[:10]})", soft_wrap=True)
    else:
        console.print("Approved apps: [bold]none[/] (the launcher runs no app bundle; `fenji node approve-app`)")
    console.print(f"Differential privacy: {_dp_text(policy)}")
    console.print(f"Minimum n: {policy.min_n} (no number about fewer rows leaves the site)")
    console.print(f"Training loss released: {'yes' if policy.release_train_loss else 'no'}")
    console.print(f"Held-out metrics: {'on count-sized grids' if policy.coarse_metrics else 'exact above min n'}")
    if policy.allow_plaintext:
        console.print("[yellow]Plaintext updates allowed by this policy[/]")


def approve_command(
    site_dir: SiteDir,
    task: Annotated[str, typer.Option(help="Built-in task name or path of a task YAML file: the plan to approve.")],
    max_rounds: Annotated[int | None, typer.Option(help="Most rounds a run of this plan may have.")] = None,
    max_local_epochs: Annotated[int | None, typer.Option(help="Most local epochs per round.")] = None,
    max_learning_rate: Annotated[float | None, typer.Option(help="Highest learning rate.")] = None,
    by: By = None,
) -> None:
    """Approve a training plan: jobs for exactly this task spec, within these bounds, may run here."""
    site_folder(site_dir, SiteDataError, must_exist=True)
    digest, plan = approve_plan(site_dir, task, by=_who(by), max_rounds=max_rounds,
                                max_local_epochs=max_local_epochs, max_learning_rate=max_learning_rate)
    console.print(f"approved plan [bold]{escape(plan.task)}[/] ({plan.family}) by {escape(plan.approved_by)}")
    typer.echo(f"digest: {digest}")
    console.print(f"bounds: {_bounds_text(plan.bounds)}")


def revoke_command(
    site_dir: SiteDir,
    task: Annotated[str | None, typer.Option(help="Revoke every approved plan of this task name.")] = None,
    digest: Annotated[str | None, typer.Option(help="Revoke the plan whose digest starts with this.")] = None,
    by: By = None,
) -> None:
    """Revoke approved plans: their jobs are refused from the next message on."""
    site_folder(site_dir, SiteDataError, must_exist=True)
    removed = revoke_plans(site_dir, by=_who(by), task=task, digest=digest)
    for d, plan in removed.items():
        console.print(f"revoked plan {escape(plan.task)} ({d[:12]})")


def approve_app_command(
    site_dir: SiteDir,
    fab: Annotated[Path | None, typer.Option(help="The app bundle (.fab from `flwr build`) or the app's folder.")] = None,
    digest: Annotated[str | None, typer.Option(help="The bundle's SHA-256 (64 hex digits), as `flwr build` names it.")] = None,
    by: By = None,
) -> None:
    """Approve an app bundle: the node's launcher runs this exact bundle (by its SHA-256) and no other."""
    site_folder(site_dir, SiteDataError, must_exist=True)
    digest_, app = approve_app(site_dir, by=_who(by), fab=fab, digest=digest)
    console.print(f"approved app [bold]{escape(app.app or '(by digest)')}[/] {escape(app.version)} by "
                  f"{escape(app.approved_by)}")
    typer.echo(f"digest: {digest_}")


def revoke_app_command(
    site_dir: SiteDir,
    digest: Annotated[str, typer.Option(help="The approved bundle's SHA-256 (all 64 hex digits).")],
    by: By = None,
) -> None:
    """Revoke an approved app bundle: the launcher refuses it from its next task on."""
    site_folder(site_dir, SiteDataError, must_exist=True)
    digest_, app = revoke_app(site_dir, by=_who(by), digest=digest)
    console.print(f"revoked app {escape(app.app or '(by digest)')} {escape(app.version)} ({digest_[:12]})")


def policy_command(
    site_dir: SiteDir,
    min_n: Annotated[int | None, typer.Option(help="No number about fewer rows leaves the site.")] = None,
    dp: Annotated[bool | None, typer.Option("--dp/--no-dp", help="Train with the site's own DP-SGD noise.")] = None,
    dp_epsilon: Annotated[float | None, typer.Option(help="Epsilon the site spends per run.")] = None,
    dp_delta: Annotated[float | None, typer.Option(help="Delta per run (between 0 and 1).")] = None,
    dp_max_grad_norm: Annotated[float | None, typer.Option(help="DP-SGD clipping norm.")] = None,
    dp_budget: Annotated[float | None, typer.Option(help="Total epsilon the site's records may spend per period.")] = None,
    dp_period_days: Annotated[int | None, typer.Option(help="Length of the budget period, in days.")] = None,
    release_train_loss: Annotated[bool | None, typer.Option(
        "--release-train-loss/--no-release-train-loss", help="Let the training loss leave the site.")] = None,
    coarse_metrics: Annotated[bool | None, typer.Option("--coarse-metrics/--exact-metrics", help=COARSE_HELP)] = None,
    by: By = None,
) -> None:
    """Show the site's policy; with options, change it (validated first; audited with old and new values)."""
    site_folder(site_dir, SiteDataError, must_exist=True)
    changes = {"min_n": min_n, "dp": dp, "dp_epsilon": dp_epsilon, "dp_delta": dp_delta,
               "dp_max_grad_norm": dp_max_grad_norm, "dp_budget": dp_budget, "dp_period_days": dp_period_days,
               "release_train_loss": release_train_loss, "coarse_metrics": coarse_metrics}
    if any(v is not None for v in changes.values()):
        diff = change_policy(site_dir, by=_who(by), **changes)
        for field, (old, new) in diff.items():
            console.print(f"{field}: {old} → [bold]{new}[/]")
        if not diff:
            console.print("policy unchanged (it already had these values)")
    policy = load_site_policy(site_dir)
    _show_policy(policy)
    if policy.dp.enabled and policy.dp.epsilon_per_run > policy.dp.budget_epsilon:
        console.print("[yellow]note: epsilon per run exceeds the budget per period: every DP run will be refused[/]")


def _why(details: dict[str, Any]) -> str:
    if "reason" in details:
        return str(details["reason"])
    old, new = details.get("old"), details.get("new")
    if isinstance(old, dict) and isinstance(new, dict):
        return ", ".join(f"{k} {old.get(k)} → {v}" for k, v in new.items())
    return ""


def status_command(site_dir: SiteDir) -> None:
    """The site's policy, its privacy budget spent and left, and the last entries of its audit log.

    Ends with an error (exit 8) if the node's audit chain does not verify.
    """
    site_folder(site_dir, SiteDataError, must_exist=True)
    policy = load_site_policy(site_dir)
    _show_policy(policy)
    dp = policy.dp
    if (site_dir / DB_NAME).exists():
        with store_errors(site_dir):
            used = spent(site_dir, period_days=dp.period_days)
        console.print(f"Privacy budget: spent epsilon {used:g} in the last {dp.period_days} days, "
                      f"{max(dp.budget_epsilon - used, 0.0):g} of {dp.budget_epsilon:g} left")
    else:
        console.print(f"Privacy budget: no site store yet ({site_dir / DB_NAME}); nothing spent")
    log = node_audit(site_dir)
    broken: AuditTamperedError | None = None
    try:
        count = log.verify()
    except AuditTamperedError as exc:
        broken = exc
    entries = []
    try:
        entries = log.entries()[-STATUS_ENTRIES:]
    except AuditTamperedError:
        pass  # reported below with where the chain breaks
    table = Table(title=f"Node audit log (last {STATUS_ENTRIES} entries)", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for column, wrap in (("seq", False), ("at (UTC)", False), ("action", False), ("run", False), ("task", True)):
        table.add_column(column, no_wrap=not wrap)
    table.add_column("reason / change", ratio=1)
    for entry in entries:
        details = entry.get("details", {})
        # Run ids are 32 hex digits; their first 8 find the run in the coordinator's log.
        table.add_row(str(entry.get("seq")), str(entry.get("at", ""))[:16].replace("T", " "),
                      escape(str(entry.get("action"))), escape(str(details.get("run_id") or "")[:8]),
                      escape(str(details.get("task") or "")), escape(_why(details)))
    console.print(table)
    if broken is not None:
        console.print(f"[bold red]Node audit chain does NOT verify:[/] {escape(first_line(broken))}")
        raise broken
    console.print(f"[green]Node audit chain verifies[/] ({count} entries, {log.path})")


def register(app: typer.Typer) -> None:
    """Add ``approve``, ``revoke``, ``approve-app``, ``revoke-app``, ``policy`` and ``status`` to the node's
    command group."""
    for name, command in (("approve", approve_command), ("revoke", revoke_command), ("approve-app", approve_app_command),
                          ("revoke-app", revoke_app_command), ("policy", policy_command), ("status", status_command)):
        app.command(name)(command)
