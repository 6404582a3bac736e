"""``fenji node …``: the commands a clinic's node agent runs (ingest, enrol, serve, up, tokens, approve, revoke,
approve-app, revoke-app, policy, status)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from node_agent.cli_clinic import register as register_clinic_commands
from node_agent.cli_policy import register as register_policy_commands
from node_agent.cli_surveillance import register as register_surveillance_command
from node_agent.cli_tokens import token_app
from node_agent.cli_up import up_command
from node_agent.errors import IngestError, SiteDataError
from node_agent.paths import input_file, removed_if_new, site_folder, store_errors
from node_agent.settings import NodeSettings, load_node_settings

__all__ = ["node_app"]

node_app = typer.Typer(help="Commands run by a clinic's node agent.", no_args_is_help=True)
node_app.add_typer(token_app, name="token")
console = Console()


@node_app.command("ingest")
def ingest_command(
    site_dir: Annotated[Path, typer.Option(help="The site's folder; its DuckDB file is site.duckdb there.")],
    task: Annotated[str, typer.Option(help="Built-in task name or path of a task YAML file.")],
    input: Annotated[Path, typer.Option("--input", help="Clinic export: CSV (any encoding) or Parquet.")],
    mapping: Annotated[str | None, typer.Option(help="Mapping YAML (path or built-in name).")] = None,
) -> None:
    """Load a clinic export into the site's DuckDB: each row accepted or quarantined with a reason."""
    from models.spec import load_task
    from node_agent.ingest import ingest_file
    from node_agent.mapping import load_mapping
    from node_agent.store import SiteStore

    spec, mapping_ = load_task(task), load_mapping(mapping)
    # Every input is checked before the site folder is created: a typo must not leave an empty site.
    input_file(input, "input file", IngestError)
    site_folder(site_dir, SiteDataError)
    with removed_if_new(site_dir), store_errors(site_dir), SiteStore(site_dir) as store:
        summary = ingest_file(store, spec, input, mapping_)
        total = store.count(spec)
    from node_agent.budget import node_audit

    node_audit(site_dir).append(actor="site-admin", action="ingest", task=spec.name, file=input.name,
                                rows_read=summary.rows_read, accepted=summary.accepted,
                                quarantined=summary.quarantined, already_ingested=summary.already_ingested)
    if summary.already_ingested:
        console.print(f"{input} was already ingested for task {spec.name} with this mapping: nothing added.")
        return
    console.print(
        f"[bold]{input.name}[/] → {site_dir} ({spec.name}): read {summary.rows_read}, "
        f"[green]accepted {summary.accepted}[/], [yellow]quarantined {summary.quarantined}[/], "
        f"already stored {summary.already_stored}; {total} records in the store."
    )
    if summary.absent_columns:
        console.print(f"  columns not in the file (recorded as missing): {', '.join(summary.absent_columns)}")
    if summary.empty_columns:
        console.print(f"  columns empty on every row (recorded as missing): {', '.join(summary.empty_columns)}")
    if summary.ignored_columns:
        console.print(f"  columns ignored: {', '.join(summary.ignored_columns)}")
    if summary.reasons:
        table = Table("quarantine reason", "rows", title="Quarantined rows (see the quarantine table)")
        for reason, count in summary.reasons.items():
            table.add_row(reason, str(count))
        console.print(table)


@node_app.command("serve")
def serve_command(
    site_dir: Annotated[Path, typer.Option(help="The site's folder (its DuckDB, tokens and model cache).")],
    registry: Annotated[str | None, typer.Option(help="MLflow tracking URI of the coordinator's registry "
                                                    "(default: the one in FENJI_HOME, or FENJI_MLFLOW_URI).")] = None,
    alias: Annotated[str, typer.Option(help="The registry alias governance approves versions under.")] = "production",
    host: Annotated[str | None, typer.Option(help="Bind address, the clinic's own network "
                                                "(default FENJI_SERVE_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default FENJI_SERVE_PORT or 8600).")] = None,
) -> None:
    """Serve the workstation page and the scoring API at the clinic, with the approved models.

    The approved versions are fetched and their digests verified; if the registry cannot be
    reached, the last good versions on this node are served (scoring never leaves the clinic).
    """
    import uvicorn

    from node_agent.distribution import ModelDistribution
    from node_agent.serve import AdvisorHolder, create_app

    site_folder(site_dir, SiteDataError, must_exist=True)
    settings = load_node_settings()
    host, port = host or settings.serve_host, port or settings.serve_port
    uri = registry or settings.existing_tracking_uri(must_exist=False)
    console.print(f"Model registry: {escape(uri or _no_registry(settings))}", soft_wrap=True)
    distribution = ModelDistribution(site_dir, uri, alias=alias)
    advisor = distribution.load()
    colour = "green" if distribution.status.startswith("fetched") else "yellow"
    console.print(f"[{colour}]Models: {escape(distribution.status)}[/]", soft_wrap=True)
    versions = ", ".join(f"{t} v{r.version}" for t, r in advisor.models.items())
    console.print(f"Serving {versions} at http://{host}:{port}/ (tokens: `fenji node token create --site-dir {site_dir}`)",
                  soft_wrap=True)
    app_ = create_app(AdvisorHolder(advisor), site_dir=site_dir, provider=distribution.fetch,
                      max_batch=settings.serve_max_batch, busy_timeout=settings.serve_busy_timeout)
    uvicorn.run(app_, host=host, port=port, log_level="warning")


def _no_registry(settings: NodeSettings) -> str:
    return (f"none at {settings.registry_file} (FENJI_HOME={settings.home}); serving the last good models "
            "this node fetched")


@node_app.command("enrol")
def enrol_command(
    site_dir: Annotated[Path, typer.Option(help="The site's folder (made by `fenji node ingest`).")],
    file: Annotated[Path, typer.Option("--file", help="The enrolment file the key holder's admin gave you.")],
) -> None:
    """Install this site's enrolment with the key holder (from `fenji keyholder enrol`).

    The file holds the key holder's verification key (the node encrypts only under a public context
    it signed) and the tag key this site shares with the key holder. It is copied into the site
    folder readable by its owner only; keep the original safe or delete it.
    """
    from federation.identity import ENROLMENT_FILE, load_enrolment
    from node_agent.store import SiteStore

    site_folder(site_dir, SiteDataError, must_exist=True)
    enrolment = load_enrolment(file)
    with store_errors(site_dir), SiteStore(site_dir, read_only=True) as store:
        site_id = store.site_id
    if enrolment.site_id != site_id:
        raise SiteDataError(f"{file} enrols site {enrolment.site_id!r}, but {site_dir} holds site {site_id!r}: "
                            "ask the key holder's admin for this site's own enrolment")
    enrolment.save(site_dir / ENROLMENT_FILE)
    console.print(f"Site [bold]{site_id}[/] enrolled with key holder {enrolment.keyholder} "
                  f"(institution {enrolment.institution}); saved to {site_dir / ENROLMENT_FILE} (mode 0600).")


register_policy_commands(node_app)  # approve, revoke, approve-app, revoke-app, policy, status (node_agent.cli_policy)
node_app.command("up")(up_command)  # SuperNode + launcher + scoring service (node_agent.cli_up)
register_clinic_commands(node_app)  # personalise, personalised, ingest-outcomes, quality (node_agent.cli_clinic)
register_surveillance_command(node_app)  # surveillance (node_agent.cli_surveillance)
