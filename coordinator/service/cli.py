"""The service's commands: ``fenji coordinator init / serve / account …`` and ``fenji audit verify / anchor``
(registered by ``coordinator.cli`` and the root command). They run on the coordinator's machine,
against ``FENJI_COORDINATOR_DB`` (default: SQLite under ``FENJI_HOME/coordinator``)."""

from __future__ import annotations

import ipaddress
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from coordinator.service.access import Role

__all__ = ["JOB_RUNNER", "account_app", "audit_app", "init_command", "serve_command"]

console = Console()
err_console = Console(stderr=True, soft_wrap=True)
account_app = typer.Typer(help="Accounts of the coordinator's API (tokens shown once, stored hashed).",
                          no_args_is_help=True)
audit_app = typer.Typer(help="The coordinator's audit chain: verify it, anchor it at the key holder.",
                        no_args_is_help=True)
CLI_ACTOR = "coordinator-cli"
JOB_RUNNER = "job_runner"  # key of the root context's obj: CoordinatorSettings -> JobRunner | None


def _open():
    from coordinator.service import open_coordinator

    return open_coordinator()


def _print_token(what: str, token: str) -> None:
    console.print(f"{what}, shown once; only its SHA-256 is kept:", soft_wrap=True)
    typer.echo(token)  # plain: no wrapping or markup may touch it


def _bootstrap(coordinator) -> None:
    from coordinator.service.accounts import bootstrap_admin
    from coordinator.service.chain import anchor_head
    from coordinator.service.training_log import adopt
    from coordinator.settings import load_coordinator_settings
    from federation.errors import AuditTamperedError

    # Runs audited in the training log before the service started (or while it was down) come under
    # the countersigned chain now.
    with coordinator.sessions() as session:
        try:
            adopted = adopt(session, load_coordinator_settings().audit_path, actor=CLI_ACTOR)
        except AuditTamperedError as exc:  # never adopt a rewritten log; `fenji audit verify` fails on it
            err_console.print(f"warning: the training log was not recorded in the chain: {escape(str(exc))}")
            adopted = None
        if adopted:
            session.commit()
    token = bootstrap_admin(coordinator.sessions)
    if token is not None or adopted:
        anchor_head(coordinator.sessions, coordinator.anchors)
    if token is not None:
        _print_token("First start: the coordinator admin 'admin' was created; its token", token)


def init_command() -> None:
    """Create the coordinator's database (tables, audit chain) and its first admin, if it has none."""
    from coordinator.service.db import engine_url_without_password
    from coordinator.settings import load_coordinator_settings

    coordinator = _open()
    console.print(f"Coordinator database: {escape(engine_url_without_password(load_coordinator_settings().database_url))}",
                  soft_wrap=True)
    _bootstrap(coordinator)


def serve_command(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Bind address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8480,
) -> None:
    """Serve the coordinator's API (/api/v1; OpenAPI at /api/v1/openapi.json) and run its training jobs.

    Which engine runs the jobs is the shell's to say: the root command puts a factory under
    ``JOB_RUNNER`` in the click context's ``obj`` (``fenji.jobs_runner``); without one, jobs stay queued.
    """
    import uvicorn

    from coordinator.service import create_app

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        err_console.print(f"warning: serving on {escape(host)}, not loopback: terminate TLS in front of the "
                          "coordinator (a reverse proxy); bearer tokens would otherwise cross the network in clear")
    coordinator = _open()
    _bootstrap(coordinator)
    if coordinator.anchors is None:
        err_console.print("warning: FENJI_KEYHOLDER_URL is unset: the audit chain is not anchored at the key holder, "
                          "so a rewrite by whoever holds the database cannot be detected")
    _start_jobs(ctx, coordinator)
    console.print(f"Coordinator at http://{host}:{port}/api/v1 (registry {escape(coordinator.registry.tracking_uri)})",
                  soft_wrap=True)
    sys.stdout.flush()
    uvicorn.run(create_app(coordinator), host=host, port=port, log_level="info")


def _start_jobs(ctx: typer.Context, coordinator) -> None:
    """Fail the jobs a dead process left running, then start the worker with the shell's runner."""
    from coordinator.settings import load_coordinator_settings

    obj = ctx.find_root().obj
    factory = obj.get(JOB_RUNNER) if isinstance(obj, dict) else None
    runner = factory(load_coordinator_settings()) if factory is not None else None
    for job_id in coordinator.jobs.start(runner):
        err_console.print(f"job {job_id} was running when the coordinator stopped: marked failed")
    if runner is None:
        err_console.print("warning: no training engine configured: submitted jobs stay queued "
                          "(the `fenji` command runs them on the simulation engine over FENJI_SITES_DIR)")
    else:
        console.print(f"Training jobs run on {escape(str(runner))}", soft_wrap=True)


@account_app.command("add")
def account_add_command(
    role: Annotated[Role, typer.Option(help="commissioner, data_scientist or coordinator_admin.")],
    name: Annotated[str, typer.Option(help="Who holds it (unique), e.g. 'Commissioner Li'.")],
) -> None:
    """Add an account (audited) and print its token once."""
    from coordinator.service.accounts import add_account
    from coordinator.service.chain import anchor_head

    coordinator = _open()
    with coordinator.sessions() as session:
        account, token = add_account(session, name=name, role=role, actor=CLI_ACTOR)
    anchor_head(coordinator.sessions, coordinator.anchors)
    _print_token(f"Account {account.id} {escape(account.name)} ({account.role}); its token", token)


@account_app.command("list")
def account_list_command() -> None:
    """List the accounts (never their tokens)."""
    from sqlalchemy import select

    from coordinator.service.db import Account

    table = Table("id", "name", "role", "created", "revoked")
    with _open().sessions() as session:
        for a in session.execute(select(Account).order_by(Account.id)).scalars():
            table.add_row(str(a.id), a.name, a.role, a.created_at, a.revoked_at or "")
    console.print(table)


@account_app.command("revoke")
def account_revoke_command(account_id: Annotated[int, typer.Option("--id", help="The account's id.")]) -> None:
    """Revoke an account's token (audited)."""
    from coordinator.service.accounts import revoke_account
    from coordinator.service.chain import anchor_head

    coordinator = _open()
    with coordinator.sessions() as session:
        account = revoke_account(session, account_id, actor=CLI_ACTOR)
    anchor_head(coordinator.sessions, coordinator.anchors)
    console.print(f"Revoked account {account.id} ({escape(account.name)}).", soft_wrap=True)


@audit_app.command("verify")
def audit_verify_command() -> None:
    """Check the coordinator's audit chain, every anchor, and the key holder's latest anchor (exit 8 if
    anything was edited, deleted, reordered, appended behind the service's back, dropped or torn); and
    the training log FENJI_HOME/audit.jsonl's own chain."""
    from coordinator.audit import AuditLog
    from coordinator.service.chain import read_chain, verify
    from coordinator.service.training_log import check
    from coordinator.settings import load_coordinator_settings

    settings = load_coordinator_settings()
    coordinator = _open()
    with coordinator.sessions() as session:
        verdict = verify(session, coordinator.anchors)
        covered = check(read_chain(session), settings.audit_path)
    console.print(f"[green]coordinator audit chain intact: {verdict.entries} entries; {verdict.anchors} stored "
                  f"anchor(s); countersigned by key holder {verdict.keyholder or '-'} up to entry "
                  f"{verdict.anchored_seq}[/]", soft_wrap=True)
    for note in verdict.notes:
        err_console.print(f"note: {escape(note)}")
    if settings.audit_path.exists():
        count = AuditLog(settings.audit_path).verify()
        console.print(f"[green]training log {escape(str(settings.audit_path))} intact: {count} entries, "
                      f"{covered} of them under heads the coordinator's chain recorded[/]", soft_wrap=True)


@audit_app.command("anchor")
def audit_anchor_command() -> None:
    """Have the key holder countersign the chain's head now (e.g. after it was unreachable)."""
    from coordinator.service.chain import anchor_head
    from coordinator.service.errors import Unavailable

    coordinator = _open()
    if coordinator.anchors is None:
        raise Unavailable("no key holder to anchor with: set FENJI_KEYHOLDER_URL and FENJI_KEYHOLDER_TOKEN")
    anchor = anchor_head(coordinator.sessions, coordinator.anchors)
    if anchor is None:
        raise Unavailable("the key holder did not countersign the head (see the warning above)")
    console.print(f"Key holder {anchor.keyholder} countersigned entry {anchor.seq} ({anchor.head[:16]}…).")
