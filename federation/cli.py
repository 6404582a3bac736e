"""The ``fenji`` command: demo, node agent ingest, simulated federations."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from federation.cli_guard import (FenjiGroup, input_file, output_file, removed_if_new, set_verbose, site_folder,
                                  store_errors)
from federation.cli_bench import bench_command
from federation.settings import Settings, configure_environment, load_settings
from models.errors import FenjiError, IngestError, RegistryError, SiteDataError, TaskSpecError

configure_environment()
if "--verbose" not in sys.argv:
    # Third-party deprecation chatter (Ray, SQLAlchemy, torch.export) is noise for a clinic's operator.
    warnings.filterwarnings("ignore")
    logging.getLogger("torch._export").setLevel(logging.ERROR)
    logging.getLogger("torch.export").setLevel(logging.ERROR)

app = typer.Typer(help="Fenji (分级): privacy-preserving federated learning for tiered diagnosis.",
                  no_args_is_help=True, pretty_exceptions_enable=False, cls=FenjiGroup)


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", help="Show tracebacks and third-party logs.")] = False) -> None:
    """Fenji (分级): privacy-preserving federated learning for tiered diagnosis.

    Every error ends in one line on stderr and a non-zero exit code (federation.cli_guard).
    """
    set_verbose(verbose)


node_app = typer.Typer(help="Commands run by a clinic's node agent.", no_args_is_help=True)
app.add_typer(node_app, name="node")


def _token_app() -> typer.Typer:
    from node_agent.serve.cli import token_app

    return token_app


node_app.add_typer(_token_app(), name="token")
console = Console()
console.width = max(console.width, 120)  # the per-site tables need room; logs are not 80 wide


def _fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


@app.command("tasks")
def tasks_command() -> None:
    """List the built-in task specs."""
    from models.spec import builtin_tasks, load_task

    table = Table("task", "label", "features", "model")
    for name in builtin_tasks():
        spec = load_task(name)
        table.add_row(name, f"{spec.label.name} ({spec.label.kind})", str(len(spec.features)), spec.model.family)
    console.print(table)


@node_app.command("ingest")
def ingest_command(
    site_dir: Annotated[Path, typer.Option(help="The site's folder; its DuckDB file is site.duckdb there.")],
    task: Annotated[str, typer.Option(help="Built-in task name or path of a task YAML file.")],
    input: Annotated[Path, typer.Option("--input", help="Clinic export: CSV (any encoding) or Parquet.")],
    mapping: Annotated[Optional[str], typer.Option(help="Mapping YAML (path or built-in name).")] = None,
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
    registry: Annotated[Optional[str], typer.Option(help="MLflow tracking URI of the coordinator's registry "
                                                    "(default: the one in FENJI_HOME, or FENJI_MLFLOW_URI).")] = None,
    alias: Annotated[str, typer.Option(help="The registry alias governance approves versions under.")] = "production",
    host: Annotated[str, typer.Option(help="Bind address (the clinic's own network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8600,
) -> None:
    """Serve the workstation page and the scoring API at the clinic, with the approved models.

    The approved versions are fetched and their digests verified; if the registry cannot be
    reached, the last good versions on this node are served (scoring never leaves the clinic).
    """
    import uvicorn

    from node_agent.distribution import ModelDistribution
    from node_agent.serve import AdvisorHolder, create_app

    site_folder(site_dir, SiteDataError, must_exist=True)
    settings = load_settings()
    uri = registry or _registry_uri(settings, must_exist=False)
    console.print(f"Model registry: {escape(uri or _no_registry(settings))}", soft_wrap=True)
    distribution = ModelDistribution(site_dir, uri, alias=alias)
    advisor = distribution.load()
    colour = "green" if distribution.status.startswith("fetched") else "yellow"
    console.print(f"[{colour}]Models: {escape(distribution.status)}[/]", soft_wrap=True)
    versions = ", ".join(f"{t} v{r.version}" for t, r in advisor.models.items())
    console.print(f"Serving {versions} at http://{host}:{port}/ (tokens: `fenji node token create --site-dir {site_dir}`)",
                  soft_wrap=True)
    app_ = create_app(AdvisorHolder(advisor), site_dir=site_dir, provider=distribution.fetch)
    uvicorn.run(app_, host=host, port=port, log_level="warning")


def _no_registry(settings: Settings) -> str:
    return (f"none at {settings.registry_file} (FENJI_HOME={settings.home}); serving the last good models "
            "this node fetched")


def _registry_uri(settings: Settings, *, must_exist: bool) -> str | None:
    """The registry every command uses (``FENJI_HOME``'s sqlite store unless ``FENJI_MLFLOW_URI`` is
    set); ``None`` or ``RegistryError`` if the default store does not exist yet (it is not created)."""
    file = settings.registry_file
    if file is not None and not file.is_file():
        if must_exist:
            raise RegistryError(f"no model registry at {file} (FENJI_HOME={settings.home}): train and register a "
                                "model first (`fenji demo` or `fenji sim`), or set FENJI_HOME to the coordinator's folder")
        return None
    return settings.tracking_uri


def _run_and_report(
    *, spec, site_dirs: list[Path], rounds: int, encrypt: bool, min_sites: int, json_out: Path | None,
    register: bool, settings: Settings, verbose: bool, title: str, dp: tuple[float, float] | None = None,
) -> dict:
    from federation.report import render, site_report, summarise
    from federation.simulation import pooled_reference, run_simulated_federation

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[auroc]}"), TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task(f"federated rounds ({'encrypted' if encrypt else 'plaintext'})", total=rounds, auroc="")

        def on_round(server_round: int, metrics: dict[str, float]) -> None:
            progress.update(bar, completed=server_round, auroc=f"mean AUROC {metrics.get('auroc', math.nan):.3f}")
            if server_round == rounds:  # what follows takes a while: say what it is
                progress.update(bar, description="encrypted calibration round, then each site's final evaluation "
                                "(its personalised and local-only models)")

        try:
            outcome = run_simulated_federation(
                spec, site_dirs, rounds=rounds, encrypt=encrypt, min_sites=min_sites, verbose=verbose,
                dp_epsilon=dp[0] if dp else None, dp_delta=dp[1] if dp else 1e-3, on_round=on_round,
            )
        except FenjiError as exc:  # a refused or failed run is part of the record too
            if register:
                _audit_log(settings).append(actor="coordinator", action="training-run-failed", task=spec.name,
                                            rounds=rounds, encrypted=encrypt, reason=str(exc),
                                            error=type(exc).__name__)
            raise
    with console.status("pooled reference: one model on all sites' training rows (only a simulation can do this)"):
        pooled = pooled_reference(spec, site_dirs, epochs=rounds * spec.model.local_epochs)
    sites = site_report(outcome, pooled)
    summary = summarise(spec, sites)
    for table in render(spec, sites, summary, title):
        console.print(table)
    for metric, claim in summary["claims"].items():
        beats = ("[green]beats local-only at every site[/]" if claim["beats_local_only_at_every_site"]
                 else f"[yellow]does not beat local-only at {', '.join(claim['sites_not_beating_local'])}[/]")
        near = "[green]within 0.02 of pooled[/]" if claim["within_0.02_of_pooled"] else "[yellow]more than 0.02 below pooled[/]"
        console.print(f"{metric}: the sites' models {beats}; mean {near} (gap {claim['gap_to_pooled']:+.3f}).")
    cal = outcome.calibration
    console.print(f"Federated calibration: {cal.kind}" + (
        f" (slope {cal.slope:.2f}, intercept {cal.intercept:+.2f})" if cal.kind == "platt"
        else f" (temperature {cal.temperature:.2f})" if cal.kind == "temperature" else ""))
    report = {
        "task": spec.name, "rounds": rounds, "encrypted": encrypt, "min_sites": min_sites,
        "differential_privacy": {"epsilon": dp[0], "delta": dp[1]} if dp else None,
        "seconds": round(outcome.seconds, 2), "calibration": cal.to_dict(),
        "sites": sites, "summary": summary, "rounds_history": outcome.rounds,
        "excluded": [e.to_dict() for e in outcome.excluded],
    }
    if outcome.excluded:
        table = Table("round", "phase", "site", "why", title="[yellow]Replies left out (the run went on without them)")
        for e in outcome.excluded:
            table.add_row(str(e.round), e.phase, e.label, e.reason)
        console.print(table)
    if register:
        from coordinator.registry import register_outcome

        registered = register_outcome(outcome, tracking_uri=settings.tracking_uri, sites=sites)
        _audit_log(settings).append(
            actor="coordinator", action="training-run", task=spec.name, rounds=rounds, encrypted=encrypt,
            sites=sorted(outcome.sites), model=registered.name, version=registered.version, run_id=registered.run_id,
            excluded=report["excluded"],
        )
        report["registered"] = {"name": registered.name, "version": registered.version, "run_id": registered.run_id,
                                "tracking_uri": registered.tracking_uri}
        console.print(f"Registered [bold]{registered.name}[/] version {registered.version} in {registered.tracking_uri}",
                      soft_wrap=True)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2, default=float))
        console.print(f"Per-site metrics written to {json_out}")
    return report


@app.command("sim")
def sim_command(
    task: Annotated[str, typer.Option(help="Built-in task name or path of a task YAML file.")],
    sites_dir: Annotated[Path, typer.Option(help="Folder of site folders made by `fenji node ingest`.")],
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 20,
    encryption: Annotated[bool, typer.Option("--encryption/--no-encryption", help="CKKS-encrypt updates.")] = True,
    min_sites: Annotated[Optional[int], typer.Option(min=1, help="Fewest sites a decrypted aggregate may cover.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write per-site metrics here.")] = None,
    register: Annotated[bool, typer.Option("--register/--no-register", help="Register the model in MLflow.")] = True,
    dp_epsilon: Annotated[Optional[float], typer.Option(help="Record-level DP-SGD at each site: epsilon for the run.")] = None,
    dp_delta: Annotated[float, typer.Option(help="DP delta.")] = 1e-3,
    verbose: Annotated[bool, typer.Option(help="Show Flower's log.")] = False,
) -> None:
    """Run a federation on Flower's simulation engine over site folders, one SuperNode per site."""
    from models.spec import load_task

    verbose = set_verbose(verbose)
    settings = load_settings()
    spec = load_task(task)
    if dp_epsilon is not None and not dp_epsilon > 0:
        raise FenjiError(f"--dp-epsilon must be positive, not {dp_epsilon}")
    if not 0 < dp_delta < 1:
        raise FenjiError(f"--dp-delta must be between 0 and 1, not {dp_delta}")
    if json_out:
        output_file(json_out, "--json file")
    site_dirs = _site_dirs(sites_dir, spec)
    needed = min_sites if min_sites is not None else min(settings.min_sites, len(site_dirs))
    if len(site_dirs) < needed:
        raise FenjiError(f"{len(site_dirs)} site folder(s) in {sites_dir}, at least {needed} needed")
    if register:
        _audit_log(settings).check_appendable()  # before the run, not after it
    _run_and_report(spec=spec, site_dirs=site_dirs, rounds=rounds, encrypt=encryption, min_sites=needed,
                    json_out=json_out, register=register, settings=settings, verbose=verbose,
                    dp=(dp_epsilon, dp_delta) if dp_epsilon else None,
                    title=f"{spec.name}: held-out AUROC per site")


def _site_dirs(sites_dir: Path, spec) -> list[Path]:
    """The site folders under ``sites_dir``, each checked to hold training rows for ``spec`` (a corrupt
    store fails here, with its name, rather than inside a simulated node)."""
    from federation.simulation import site_dirs_of
    from node_agent.local import load_site_data

    if not sites_dir.exists():
        raise FenjiError(f"no such folder: {sites_dir}")
    if not sites_dir.is_dir():
        raise FenjiError(f"--sites-dir {sites_dir} is a file: give the folder that holds the site folders")
    site_dirs = site_dirs_of(sites_dir)
    if not site_dirs:
        raise SiteDataError(f"no site folders in {sites_dir}: it should hold one folder per site, each with the "
                            "site.duckdb that `fenji node ingest` makes")
    for site_dir in site_dirs:
        with store_errors(site_dir):
            load_site_data(site_dir, spec)
    return site_dirs


def _audit_log(settings: Settings):
    from coordinator.audit import AuditLog

    return AuditLog(settings.audit_path)


DEMO_MARKER = ".fenji-demo"  # written into the folder a demo made: only such a folder is ever cleared
DEMO_OUTPUTS = ("exports", "sites")


@app.command("demo")
def demo_command(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its clinics' exports, site stores and reports "
                                               "(the registry and audit log are FENJI_HOME's).")] = Path("fenji-demo"),
    rounds: Annotated[int, typer.Option(min=1)] = 15,
    encryption: Annotated[bool, typer.Option("--encryption/--no-encryption")] = True,
    seed: Annotated[int, typer.Option()] = 0,
    tasks: Annotated[str, typer.Option(help="Tasks to train, comma-separated.")] = "triage,diagnosis,referral_risk",
    verbose: Annotated[bool, typer.Option(help="Show Flower's log.")] = False,
) -> None:
    """Generate synthetic community clinics, ingest them, and train the three clinical models
    (triage, diagnosis, referral risk) in encrypted federations."""
    from federation.synth import write_federation
    from models.spec import load_task
    from node_agent.ingest import ingest_file
    from node_agent.mapping import load_mapping
    from node_agent.store import SiteStore

    verbose = set_verbose(verbose)
    # Every option is checked before anything is deleted or created.
    settings = load_settings()
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    if not names:
        raise TaskSpecError("--tasks names no task")
    specs = [load_task(name) for name in names]
    _claim_workdir(workdir, settings)
    _audit_log(settings).check_appendable()
    _clear_demo_outputs(workdir)
    exports = write_federation(workdir / "exports", seed=seed)
    console.rule(f"[bold]Fenji demo: {len(exports)} community clinics, {', '.join(s.name for s in specs)}")
    table = Table("clinic", "rows read", "accepted", "quarantined", "never recorded",
                  title="1. Each clinic's node agent ingests its own export into its own DuckDB")
    site_dirs = []
    for name, path, mapping in exports:
        with SiteStore(workdir / "sites" / name) as store:
            for spec in specs:
                summary = ingest_file(store, spec, path, load_mapping(mapping))
        site_dirs.append(workdir / "sites" / name)
        table.add_row(name, str(summary.rows_read), str(summary.accepted), str(summary.quarantined),
                      ", ".join(summary.never_recorded) or "–")
    console.print(table)
    console.print("2. Federated statistics, training and calibration: sites send only CKKS ciphertexts; "
                  "a separate key-holder process decrypts sums over ≥ 3 sites.")
    results = {}
    for step, spec in enumerate(specs, start=3):
        console.rule(f"[bold]{step}. {spec.name} ({spec.label.kind})")
        results[spec.name] = _run_and_report(
            spec=spec, site_dirs=site_dirs, rounds=rounds, encrypt=encryption, min_sites=3,
            json_out=workdir / f"demo-{spec.name}.json", register=True, settings=settings, verbose=verbose,
            title=f"{spec.name}, held-out",
        )
    from federation.report import demo_summary_markdown

    summary_md = demo_summary_markdown(results)
    (workdir / "demo-summary.md").write_text(summary_md, encoding="utf-8")
    console.rule("[bold]Summary: means over the clinics (also in demo-summary.md; the README quotes it)")
    console.print(summary_md, markup=False, highlight=False, soft_wrap=True)
    console.print(f"MLflow UI: mlflow ui --backend-store-uri {settings.tracking_uri}", soft_wrap=True)
    _demo_login(settings, site_dirs[0], {t: r["registered"]["version"] for t, r in results.items()})


def _claim_workdir(workdir: Path, settings: Settings) -> None:
    """Refuse a ``--workdir`` the demo may not use: a file, a folder some earlier demo did not make
    (the demo never deletes what it did not make), or one whose outputs hold ``FENJI_HOME``."""
    if workdir.exists() and not workdir.is_dir():
        raise FenjiError(f"--workdir {workdir} is a file: give a new folder, or one an earlier demo made")
    if workdir.is_dir() and not (workdir / DEMO_MARKER).is_file() and any(workdir.iterdir()):
        raise FenjiError(f"--workdir {workdir} exists, is not empty and was not made by `fenji demo` (it has no "
                         f"{DEMO_MARKER} file); the demo only replaces its own folders: give a new --workdir, or "
                         "remove this one yourself (a folder from a Fenji version before the marker has none)")
    home = settings.home.resolve()
    for name in DEMO_OUTPUTS:
        if home.is_relative_to((workdir / name).resolve()):
            raise FenjiError(f"FENJI_HOME ({settings.home}) is inside {workdir / name}, which the demo replaces: "
                             "put the registry elsewhere")


def _clear_demo_outputs(workdir: Path) -> None:
    """Remove what an earlier demo wrote here (its marker says it made the folder); keep anything else."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in DEMO_OUTPUTS:
        if (workdir / name).is_dir():
            shutil.rmtree(workdir / name)
    for report in [*workdir.glob("demo-*.json"), *workdir.glob("demo-summary.md")]:
        report.unlink()
    (workdir / DEMO_MARKER).write_text("Made by `fenji demo`: a later demo replaces exports/, sites/, "
                                       "demo-*.json and demo-summary.md here, and nothing else.\n", encoding="utf-8")


def _demo_login(settings: Settings, site_dir: Path, versions: dict[str, str]) -> None:
    """Approve the versions the demo just registered (audited) and print how a doctor logs in."""
    from coordinator.registry import promote
    from node_agent.serve.cli import create_token

    if sorted(versions) != ["diagnosis", "referral_risk", "triage"]:
        return  # the workstation needs all three models
    for task, version in versions.items():
        promote(task, version, tracking_uri=settings.tracking_uri, audit=_audit_log(settings), actor="demo")
    token = create_token(site_dir, role="doctor", name="Demo doctor").token
    console.rule("[bold]The doctor's workstation")
    approved = ", ".join(f"{t} v{v}" for t, v in versions.items())
    console.print(f"Approved for the clinics ('production'): {approved}, in the registry {settings.tracking_uri}",
                  soft_wrap=True)
    console.print(f"fenji node serve --site-dir {site_dir}\n"
                  f"then open http://127.0.0.1:8600/ and log in with the doctor token:\n  [bold]{token}[/]\n"
                  f"(more tokens: fenji node token create --site-dir {site_dir} --role site_admin --name ...)")


models_app = typer.Typer(help="Governance of registered model versions.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("promote")
def promote_command(
    task: Annotated[str, typer.Option(help="triage, diagnosis or referral_risk.")],
    version: Annotated[str, typer.Option(help="The registered version to serve.")],
    actor: Annotated[str, typer.Option(help="Who approves (recorded in the audit log).")],
    alias: Annotated[str, typer.Option(help="Registry alias the clinics fetch.")] = "production",
) -> None:
    """Approve a model version for the clinics: audit the decision, then point the alias at it."""
    from coordinator.registry import model_name, promote

    settings = load_settings()
    if not re.fullmatch(r"[a-z][a-z0-9_]*", task):
        raise TaskSpecError(f"{task!r} is not a task name (e.g. triage, diagnosis, referral_risk)")
    if not version.isdigit():
        raise RegistryError(f"--version takes a registered version number, not {version!r}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", alias) or re.fullmatch(r"[vV]\d+|latest", alias):
        raise RegistryError(f"{alias!r} cannot be a registry alias (letters, digits, _ and -; not 'latest' or v<n>)")
    if not actor.strip():
        raise FenjiError("--actor must name who approves")
    uri = _registry_uri(settings, must_exist=True)
    console.print(f"Model registry: {escape(uri)}", soft_wrap=True)
    digest = promote(task, version, tracking_uri=uri, alias=alias, audit=_audit_log(settings), actor=actor)
    console.print(f"{model_name(task)} version {version} is now '{alias}' (bundle sha256 {digest[:16]}…; "
                  f"audited in {settings.audit_path}).", soft_wrap=True)


# `fenji bench` lives in its own module (this one would pass ~500 lines); registered here, in order.
app.command("bench")(bench_command)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
