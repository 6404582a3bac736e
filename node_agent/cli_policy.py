"""``fenji node approve / revoke / approve-app / revoke-app / policy / status``: the site admin edits and
reads the site's line.

The policy file (``node_agent.policy``) is changed only through ``node_agent.policy_edits`` (here, and
by the simulation acting as every site's admin): each change is validated in full before the file is
written, so a bad value leaves the file as it was, and each change lands in the node's hash-chained
audit log with what it was before. ``node_agent.cli_policy_show`` prints what the commands show.
``register`` adds the six commands to ``node_app``.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from federation.errors import AuditTamperedError
from models.errors import first_line
from node_agent.budget import node_audit, spent
from node_agent.cli_policy_show import (
    audit_table,
    bounds_text,
    policy_notes,
    show_policy,
)
from node_agent.errors import SiteDataError
from node_agent.paths import site_folder, store_errors
from node_agent.policy import load_site_policy
from node_agent.policy_edits import (
    ANALYTICS_KINDS,
    approve_app,
    approve_plan,
    change_policy,
    revoke_app,
    revoke_plans,
)
from node_agent.store import DB_NAME

__all__ = ["register"]

console = Console()
SiteDir = Annotated[Path, typer.Option(help="The site's folder (policy.json and node-audit.jsonl are kept there).")]
By = Annotated[str | None, typer.Option("--by", help="Who makes the change (default: the logged-in user).")]
STATUS_ENTRIES = 10
COARSE_HELP = ("Release held-out metrics on count-sized grids (no metric pins a count more finely than the count "
               "rule; AUROC and kappa about small classes withheld).")
KINDS_HELP = f"Comma-separated statistics query kinds ({', '.join(ANALYTICS_KINDS)}, or all)"


def _who(by: str | None) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a container
        return "site admin"


def _kinds(text: str | None) -> list[str] | None:
    """``"count, mean"`` as ``["count", "mean"]`` (the edit checks the names)."""
    return None if text is None else [part for part in text.split(",") if part.strip()]


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
    console.print(f"bounds: {bounds_text(plan.bounds)}")


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
    analytics_allow: Annotated[str | None, typer.Option(
        help=f"{KINDS_HELP} the site answers about its approved tasks, added to those it answers.")] = None,
    analytics_deny: Annotated[str | None, typer.Option(
        help=f"{KINDS_HELP} the site stops answering.")] = None,
    analytics_dp_epsilon: Annotated[float | None, typer.Option(
        help="Laplace noise on every statistics answer at this epsilon, charged to the budget (0: exact cells, "
             "small ones suppressed).")] = None,
    by: By = None,
) -> None:
    """Show the site's policy; with options, change it (validated first; audited with old and new values)."""
    site_folder(site_dir, SiteDataError, must_exist=True)
    changes = {"min_n": min_n, "dp": dp, "dp_epsilon": dp_epsilon, "dp_delta": dp_delta,
               "dp_max_grad_norm": dp_max_grad_norm, "dp_budget": dp_budget, "dp_period_days": dp_period_days,
               "release_train_loss": release_train_loss, "coarse_metrics": coarse_metrics,
               "analytics_dp_epsilon": analytics_dp_epsilon}
    kinds = {"analytics_allow": _kinds(analytics_allow), "analytics_deny": _kinds(analytics_deny)}
    if any(v is not None for v in (*changes.values(), *kinds.values())):
        diff = change_policy(site_dir, by=_who(by), **kinds, **changes)
        for field, (old, new) in diff.items():
            if isinstance(new, list):  # the kinds allowed, as they were typed
                old, new = ",".join(old) or "none", ",".join(new) or "none"
            console.print(f"{field}: {old} → [bold]{new}[/]")
        if not diff:
            console.print("policy unchanged (it already had these values)")
    policy = load_site_policy(site_dir)
    show_policy(policy)
    policy_notes(policy)


def status_command(site_dir: SiteDir) -> None:
    """The site's policy, its privacy budget spent and left, and the last entries of its audit log.

    Ends with an error (exit 8) if the node's audit chain does not verify.
    """
    site_folder(site_dir, SiteDataError, must_exist=True)
    policy = load_site_policy(site_dir)
    show_policy(policy)
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
    console.print(audit_table(entries, title=f"Node audit log (last {STATUS_ENTRIES} entries)"))
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
