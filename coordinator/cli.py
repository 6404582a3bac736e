"""``fenji coordinator …``: the city's commands: the service (``init``, ``serve``, ``account …``;
``coordinator.service.cli``) and governance of registered model versions (``promote``)."""

from __future__ import annotations

import re
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from coordinator.errors import RegistryError
from coordinator.service.cli import account_app, audit_app, init_command, serve_command
from coordinator.service.errors import FourEyes
from coordinator.settings import load_coordinator_settings
from models.errors import FenjiError, TaskSpecError

__all__ = ["audit_app", "coordinator_app"]

coordinator_app = typer.Typer(help="Commands run by the city's coordinator.", no_args_is_help=True)
coordinator_app.command("init")(init_command)
coordinator_app.command("serve")(serve_command)
coordinator_app.add_typer(account_app, name="account")
console = Console()


@coordinator_app.command("promote")
def promote_command(
    task: Annotated[str, typer.Option(help="triage, diagnosis or referral_risk.")],
    version: Annotated[str, typer.Option(help="The registered version to serve.")],
    actor: Annotated[str, typer.Option(help="Who approves (recorded in the audit log).")],
    alias: Annotated[str, typer.Option(help="Registry alias the clinics fetch.")] = "production",
) -> None:
    """Approve a model version for the clinics: audit the decision, then point the alias at it.

    Only where no governance service runs (a single-machine trial): a coordinator with the service
    (``fenji coordinator init``) refuses, since there a promotion needs two commissioners."""
    from coordinator.audit import AuditLog
    from coordinator.registry import model_name, promote

    settings = load_coordinator_settings()
    if not re.fullmatch(r"[a-z][a-z0-9_]*", task):
        raise TaskSpecError(f"{task!r} is not a task name (e.g. triage, diagnosis, referral_risk)")
    if not version.isdigit():
        raise RegistryError(f"--version takes a registered version number, not {version!r}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", alias) or re.fullmatch(r"[vV]\d+|latest", alias):
        raise RegistryError(f"{alias!r} cannot be a registry alias (letters, digits, _ and -; not 'latest' or v<n>)")
    if not actor.strip():
        raise FenjiError("--actor must name who approves")
    if settings.runs_service:
        # A city that runs the governance service decides under four eyes; this command would let one
        # person with shell access move the alias alone, outside the countersigned audit chain.
        raise FourEyes(
            "this coordinator runs the governance service: a version reaches the clinics only when two different "
            "commissioners approve it, each with a reason (the console, or POST "
            f"/api/v1/models/{task}/versions/{version}/approve); `fenji coordinator promote` is for a "
            "single-machine trial without the service")
    uri = settings.existing_tracking_uri(must_exist=True)
    console.print(f"Model registry: {escape(uri)}", soft_wrap=True)
    digest = promote(task, version, tracking_uri=uri, alias=alias, audit=AuditLog(settings.audit_path), actor=actor)
    console.print(f"{model_name(task)} version {version} is now '{alias}' (bundle sha256 {digest[:16]}…; "
                  f"audited in {settings.audit_path}).", soft_wrap=True)
