"""``fenji node personalise / personalised / use-model / ingest-outcomes / quality``: the clinic's own
learning loop.

Thin wrappers: ``node_agent.personalised`` (the site's personalised models), ``node_agent.distribution``
(which registered task each slot serves), ``node_agent.outcome_rows``
(decisions with outcomes as training rows) and ``node_agent.quality`` (the decision-quality review).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from models.advisor import TASKS
from node_agent.budget import node_audit
from node_agent.errors import SiteDataError
from node_agent.paths import site_folder, store_errors

__all__ = ["register"]

console = Console()
SiteDir = Annotated[Path, typer.Option(help="The site's folder (its DuckDB, model cache and personalised models).")]
Tasks = Annotated[list[str] | None, typer.Option("--task", help="A task (repeat for several; default: all three).")]


class Switch(str, Enum):
    on = "on"
    off = "off"


def personalise_command(site_dir: SiteDir, task: Tasks = None) -> None:
    """Adapt the production global model(s) to this site's own rows and keep the result here.

    The personalised model never leaves the site. `fenji node serve` serves it while it matches the
    production version it came from (reload or restart the server to pick up a new one).
    """
    from node_agent.personalised import personalise_site

    site_folder(site_dir, SiteDataError, must_exist=True)
    for name in task or TASKS:
        with store_errors(site_dir):
            info = personalise_site(site_dir, name)
        node_audit(site_dir).append(actor="site-admin", action="personalised", task=name, method=info.method,
                                    base_version=info.base_version, bundle_sha256=info.bundle_sha256)
        console.print(f"{name}: [bold]{escape(info.method)}[/] on {info.rows} rows, from global version "
                      f"{info.base_version} → version {info.version} (sha256 {info.bundle_sha256[:12]}…)")


def personalised_command(
    switch: Annotated[Switch, typer.Argument(help="on: serve the site's personalised models; off: the global ones.")],
    site_dir: SiteDir,
) -> None:
    """Serve this site's personalised models (on) or fall back to the global models (off).

    Takes effect when the scoring service reloads its models or restarts.
    """
    from node_agent.personalised import set_enabled

    site_folder(site_dir, SiteDataError, must_exist=True)
    set_enabled(site_dir, switch is Switch.on)
    node_audit(site_dir).append(actor="site-admin", action="personalised-switched", enabled=switch is Switch.on)
    console.print(f"Personalised models {switch.value} at {site_dir} (reload or restart `fenji node serve`).")


def use_model_command(
    task: Annotated[str, typer.Argument(help="The registered task to serve, e.g. referral_risk_text (or "
                                             "referral_risk to go back).")],
    site_dir: SiteDir,
) -> None:
    """Serve this task in the slot that predicts its label (referral_risk_text in referral_risk, …).

    Takes effect when `fenji node serve` next starts (a model that reads other inputs changes the
    page's form, so a reload refuses it); then run `fenji node personalise` for that slot again (a
    personalised model of the other task is not served).
    """
    from node_agent.distribution import serve_task

    site_folder(site_dir, SiteDataError, must_exist=True)
    slot = serve_task(site_dir, task)
    node_audit(site_dir).append(actor="site-admin", action="served-task", slot=slot, task=task)
    console.print(f"The {slot} slot serves [bold]{escape(task)}[/] once `fenji node serve` restarts; then "
                  f"`fenji node personalise --task {slot}` again.")


def ingest_outcomes_command(site_dir: SiteDir, task: Tasks = None) -> None:
    """Turn the doctors' decisions with recorded outcomes into training rows of the site's store.

    The same checks as `fenji node ingest`; run it between federated runs, not during one.
    """
    from models.spec import load_task
    from node_agent.outcome_rows import ingest_outcomes
    from node_agent.store import SiteStore

    site_folder(site_dir, SiteDataError, must_exist=True)
    for name in task or TASKS:
        spec = load_task(name)
        with store_errors(site_dir), SiteStore(site_dir) as store:
            done = ingest_outcomes(store, spec)
            total = store.count(spec)
        s = done.summary
        node_audit(site_dir).append(actor="site-admin", action="ingest-outcomes", task=spec.name,
                                    rows_read=s.rows_read, accepted=s.accepted, quarantined=s.quarantined)
        console.print(f"{spec.name}: read {s.rows_read}, [green]accepted {s.accepted}[/], [yellow]quarantined "
                      f"{s.quarantined}[/], already stored {s.already_stored}; {done.without_label} decisions have "
                      f"no {spec.label.name} outcome yet; {total} records in the store.")
        if s.reasons:
            table = Table("quarantine reason", "rows", title="Quarantined rows (see the quarantine table)")
            for reason, count in s.reasons.items():
                table.add_row(escape(reason), str(count))
            console.print(table)


def quality_command(
    site_dir: SiteDir,
    release: Annotated[bool, typer.Option(help="Only what may leave the clinic: suppressed, rounded counts.")] = False,
) -> None:
    """The decision-quality review: over- and under-referral, agreement with the recommended tier."""
    from node_agent.quality import released_review, review
    from node_agent.store import SiteStore

    site_folder(site_dir, SiteDataError, must_exist=True)
    with store_errors(site_dir):
        if release:
            result = released_review(site_dir)
        else:
            with SiteStore(site_dir, read_only=True) as store:
                result = review(store.connection).model_dump(mode="json")
    console.print_json(json.dumps(result, ensure_ascii=False))


def register(app: typer.Typer) -> None:
    app.command("personalise")(personalise_command)
    app.command("personalised")(personalised_command)
    app.command("use-model")(use_model_command)
    app.command("ingest-outcomes")(ingest_outcomes_command)
    app.command("quality")(quality_command)
