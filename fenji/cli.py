"""The ``fenji`` command: the root that composes the parties' sub-commands (``fenji node …``,
``fenji coordinator …``) with the shells' own: ``tasks``, ``sim``, ``demo`` and ``bench``."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from coordinator.cli import audit_app, coordinator_app, promote_command
from coordinator.errors import NotEnoughSitesError
from coordinator.service.cli import JOB_RUNNER
from coordinator.settings import load_coordinator_settings
from federation.settings import configure_environment
from fenji.audit_heads import heads_command
from fenji.cli_bench import bench_command
from fenji.cli_guard import FenjiGroup, output_file, set_verbose
from fenji.demo import demo_command
from fenji.jobs_runner import runner_from_settings
from fenji.run_report import audit_log, console, run_and_report
from keyholder.cli import keyholder_app
from keyholder.settings import load_keyholder_settings
from models.errors import FenjiError
from node_agent.cli import node_app
from node_agent.errors import SiteDataError
from node_agent.paths import store_errors

__all__ = ["app"]

configure_environment()
if "--verbose" not in sys.argv:
    # Third-party deprecation chatter (Ray, SQLAlchemy, torch.export) is noise for a clinic's operator.
    warnings.filterwarnings("ignore")
    logging.getLogger("torch._export").setLevel(logging.ERROR)
    logging.getLogger("torch.export").setLevel(logging.ERROR)

app = typer.Typer(help="Fenji (分级): privacy-preserving federated learning for tiered diagnosis.",
                  no_args_is_help=True, pretty_exceptions_enable=False, cls=FenjiGroup)


@app.callback()
def _root(ctx: typer.Context,
          verbose: Annotated[bool, typer.Option("--verbose", help="Show tracebacks and third-party logs.")] = False) -> None:
    """Fenji (分级): privacy-preserving federated learning for tiered diagnosis.

    Every error ends in one line on stderr and a non-zero exit code (fenji.cli_guard).
    """
    set_verbose(verbose)
    # `fenji coordinator serve` runs its training jobs on the simulation engine over FENJI_SITES_DIR.
    ctx.ensure_object(dict).setdefault(JOB_RUNNER, runner_from_settings)


app.add_typer(node_app, name="node")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(keyholder_app, name="keyholder")
app.add_typer(audit_app, name="audit")
audit_app.command("heads")(heads_command)

# `fenji models promote` was the command's name before the coordinator had a sub-command of its own.
models_app = typer.Typer(help="Old name of `fenji coordinator promote` (still works).", no_args_is_help=True,
                         hidden=True)
app.add_typer(models_app, name="models")
models_app.command("promote", help="Old name of `fenji coordinator promote` (still works).")(promote_command)


@models_app.callback()
def _old_name() -> None:
    typer.echo("note: `fenji models promote` is now `fenji coordinator promote`", err=True)


@app.command("tasks")
def tasks_command() -> None:
    """List the built-in task specs."""
    from models.spec import builtin_tasks, load_task

    table = Table("task", "label", "features", "model")
    for name in builtin_tasks():
        spec = load_task(name)
        table.add_row(name, f"{spec.label.name} ({spec.label.kind})", str(len(spec.features)), spec.model.family)
    console.print(table)


@app.command("sim")
def sim_command(
    task: Annotated[str, typer.Option(help="Built-in task name or path of a task YAML file.")],
    sites_dir: Annotated[Path, typer.Option(help="Folder of site folders made by `fenji node ingest`.")],
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 20,
    encryption: Annotated[bool, typer.Option("--encryption/--no-encryption", help="CKKS-encrypt updates.")] = True,
    min_sites: Annotated[Optional[int], typer.Option(hidden=True, help="Removed: min-sites is the key holder's.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write per-site metrics here.")] = None,
    register: Annotated[bool, typer.Option("--register/--no-register", help="Register the model in MLflow.")] = True,
    dp_epsilon: Annotated[Optional[float], typer.Option(
        help="Set each site's DP policy (as its admin): DP-SGD at this epsilon per run, charged to its budget.",
    )] = None,
    dp_delta: Annotated[float, typer.Option(help="DP delta.")] = 1e-3,
    verbose: Annotated[bool, typer.Option(help="Show Flower's log.")] = False,
) -> None:
    """Run a federation on Flower's simulation engine over site folders, one SuperNode per site."""
    from models.spec import load_task

    verbose = set_verbose(verbose)
    settings = load_coordinator_settings()
    spec = load_task(task)
    if dp_epsilon is not None and not dp_epsilon > 0:
        raise FenjiError(f"--dp-epsilon must be positive, not {dp_epsilon}")
    if not 0 < dp_delta < 1:
        raise FenjiError(f"--dp-delta must be between 0 and 1, not {dp_delta}")
    if json_out:
        output_file(json_out, "--json file")
    if min_sites is not None:
        raise FenjiError("--min-sites is gone: min-sites is the key holder's rule (FENJI_MIN_SITES where the key "
                         "holder runs), and no flag of the coordinator can lower it")
    site_dirs = _site_dirs(sites_dir, spec)
    needed = load_keyholder_settings(home=settings.home).min_sites
    if len(site_dirs) < needed:
        raise NotEnoughSitesError(f"{len(site_dirs)} site folder(s) in {sites_dir}: the key holder decrypts only sums "
                                  f"over at least {needed} sites (FENJI_MIN_SITES), so this federation cannot run")
    if register:
        audit_log(settings).check_appendable()  # before the run, not after it
    run_and_report(spec=spec, site_dirs=site_dirs, rounds=rounds, encrypt=encryption,
                    json_out=json_out, register=register, settings=settings, verbose=verbose,
                    dp=(dp_epsilon, dp_delta) if dp_epsilon else None,
                    title=f"{spec.name}: held-out AUROC per site")


def _site_dirs(sites_dir: Path, spec) -> list[Path]:
    """The site folders under ``sites_dir``, each checked to hold training rows for ``spec`` (a corrupt
    store fails here, with its name, rather than inside a simulated node)."""
    from node_agent.local import load_site_data
    from simulation.engine import site_dirs_of

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


app.command("demo")(demo_command)
app.command("bench")(bench_command)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
