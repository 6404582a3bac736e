"""``fenji demo``: synthetic community clinics, each ingested by its own node agent, then the three
clinical models trained in encrypted federations, registered, approved, and a doctor's login."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from coordinator.settings import CoordinatorSettings, load_coordinator_settings
from fenji.cli_guard import set_verbose
from fenji.demo_surveillance import show_surveillance
from fenji.run_report import audit_log, console, run_and_report
from models.errors import FenjiError, TaskSpecError

if TYPE_CHECKING:
    from fenji.demo_clinics import Served

__all__ = ["demo_command"]

DEMO_MARKER = ".fenji-demo"  # written into the folder a demo made: only such a folder is ever cleared
DEMO_OUTPUTS = ("exports", "sites")
# Each clinic trains with DP on, as its admin sets it: six runs (three tasks, with and without the complaint
# text) at epsilon 1.5 spend 9 of each clinic's default budget of 10 per year (--dp-epsilon 0: no DP). At
# these clinic sizes DP-SGD (models.training.DP_SGD) costs diagnosis, with and without the text, its gain
# over the clinics' local-only models; triage and referral risk keep theirs (bench/dp_utility.py, and the
# README's block). The demo's clinics seed
# their noise with --seed (DPPolicy.noise_seed, mixed with each clinic's own run count, the round and the
# clinic), so a demo repeats and the README can quote it; once its runs are done the demo removes the
# seed, so a job run later on its clinics (from the console) draws its noise from the OS. A clinic whose
# policy seeds its noise never joins a real federation (`fenji node up` and the deployment engine's
# nodes refuse it).
DEMO_DP = (1.5, 1e-4)


def demo_command(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its clinics' exports, site stores and reports "
                                               "(the registry and audit log are FENJI_HOME's).")] = Path("fenji-demo"),
    rounds: Annotated[int, typer.Option(min=1)] = 15,
    encryption: Annotated[bool, typer.Option("--encryption/--no-encryption")] = True,
    seed: Annotated[int, typer.Option()] = 0,
    tasks: Annotated[str, typer.Option(help="Tasks to train, comma-separated.")] = "triage,diagnosis,referral_risk",
    text_rounds: Annotated[Optional[int], typer.Option(
        min=0, help="Rounds for each task's `*_text` variant (the same task with the complaint as free text), trained "
                    "after it; default: --rounds; 0: none.")] = None,
    dp_epsilon: Annotated[float, typer.Option(
        min=0, help="Each clinic's DP policy, as its admin sets it: DP-SGD at this epsilon per training run, charged "
                    "to the clinic's own budget (its policy; 10 per 365 days by default): the six runs at 1.5 spend "
                    "9. The demo's clinics seed their noise with --seed, so a demo repeats. 0 trains without DP.")
    ] = DEMO_DP[0],
    dp_delta: Annotated[float, typer.Option(min=0, max=1, help="DP delta per run.")] = DEMO_DP[1],
    verbose: Annotated[bool, typer.Option(help="Show Flower's log.")] = False,
) -> None:
    """Generate synthetic community clinics, ingest them, train the three clinical models (triage,
    diagnosis, referral risk) without and with the complaint text in encrypted federations, and have
    each clinic choose, personalise and serve its own."""
    from coordinator.registry import promote
    from fenji.demo_clinics import (
        per_clinic_tables,
        serve_at_clinics,
        served_json,
        summary_markdown,
        with_text_variants,
    )
    from models.spec import load_task
    from node_agent.ingest import ingest_file
    from node_agent.mapping import load_mapping
    from node_agent.store import SiteStore
    from simulation.synth import write_federation

    verbose = set_verbose(verbose)
    # Every option is checked before anything is deleted or created.
    settings = load_coordinator_settings()
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    if not names:
        raise TaskSpecError("--tasks names no task")
    text_rounds = rounds if text_rounds is None else text_rounds
    specs = [load_task(name) for name in (with_text_variants(names) if text_rounds else names)]
    rounds_of = {s.name: text_rounds if s.name not in names else rounds for s in specs}
    _claim_workdir(workdir, settings)
    audit_log(settings).check_appendable()
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
    if dp_epsilon and not 0 < dp_delta < 1:
        raise FenjiError(f"--dp-delta must be between 0 and 1, not {dp_delta}")
    dp = (dp_epsilon, dp_delta) if dp_epsilon else None
    _approve_plans(site_dirs, specs, max(rounds_of.values()), dp, noise_seed=seed)
    console.print("3. Federated statistics, training and calibration: sites send only CKKS ciphertexts; "
                  "the key holder, a service of its own, decrypts only sums whose tags prove they cover ≥ 3 enrolled sites.")
    results = {}
    for step, spec in enumerate(specs, start=4):
        console.rule(f"[bold]{step}. {spec.name} ({spec.label.kind})")
        results[spec.name] = run_and_report(
            spec=spec, site_dirs=site_dirs, rounds=rounds_of[spec.name], encrypt=encryption,
            json_out=workdir / f"demo-{spec.name}.json", register=True, settings=settings, verbose=verbose,
            title=f"{spec.name}, held-out", dp=dp,
        )
    if dp:  # the seed was for the demo's own runs: later jobs on these clinics draw fresh noise
        from simulation.engine import unseed_sites

        unseed_sites(site_dirs)
    _show_budgets(site_dirs)
    versions = {t: r["registered"]["version"] for t, r in results.items()}
    for task, version in versions.items():  # approved for the clinics ('production'), audited
        promote(task, version, tracking_uri=settings.tracking_uri, audit=audit_log(settings), actor="demo")
    served = serve_at_clinics(site_dirs, settings.tracking_uri, list(results))
    (workdir / "demo-served.json").write_text(json.dumps(served_json(served), indent=2, default=float))
    for table in per_clinic_tables(results, served):
        console.print(table)
    summary_md = summary_markdown(results, served)
    (workdir / "demo-summary.md").write_text(summary_md, encoding="utf-8")
    console.rule("[bold]Summary: means over the clinics (also in demo-summary.md; the README quotes it)")
    console.print(summary_md, markup=False, highlight=False, soft_wrap=True)
    console.print(f"MLflow UI: mlflow ui --backend-store-uri {settings.tracking_uri}", soft_wrap=True)
    show_surveillance(site_dirs, specs, settings, encrypt=encryption, verbose=verbose)  # fenji.demo_surveillance
    _demo_login(settings, site_dirs[0], versions, served)


def _claim_workdir(workdir: Path, settings: CoordinatorSettings) -> None:
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


def _demo_login(settings: CoordinatorSettings, site_dir: Path, versions: dict[str, str],
                served: dict[str, dict[str, Served]]) -> None:
    """Print what the clinic serves, how a doctor logs in there and how a commissioner starts the
    coordinator's service and logs in to its console."""
    from node_agent.cli_tokens import create_token

    if not served:
        return  # the workstation needs all three models
    token = create_token(site_dir, role="doctor", name="Demo doctor").token
    console.rule("[bold]The doctor's workstation")
    approved = ", ".join(f"{t} v{v}" for t, v in versions.items())
    console.print(f"Approved for the clinics ('production'): {approved}, in the registry {settings.tracking_uri}",
                  soft_wrap=True)
    console.print(f"{site_dir.name} serves: " + "; ".join(
        f"{slot}: fenji-{s.task} v{s.version} ({s.note})" for slot, s in served[site_dir.name].items()),
        soft_wrap=True, markup=False, highlight=False)
    console.print(f"fenji node serve --site-dir {site_dir}\n"
                  f"then open http://127.0.0.1:8600/ and log in with the doctor token:\n  [bold]{token}[/]\n"
                  f"(more tokens: fenji node token create --site-dir {site_dir} --role site_admin --name ...)")
    console.rule("[bold]The commission's console")
    sites = site_dir.parent
    console.print("fenji coordinator init                      # once: the coordinator's database and its admin token\n"
                  'fenji coordinator account add --role commissioner --name "Commissioner A"   # prints A\'s token\n'
                  'fenji coordinator account add --role commissioner --name "Commissioner B"   # four eyes: a second one\n'
                  f"FENJI_SITES_DIR={sites} fenji coordinator serve\n"
                  "then open http://127.0.0.1:8480/ and log in with a commissioner token: compare versions per clinic, "
                  "approve (two commissioners), roll back, read the audit trail. From then on a version reaches the "
                  "clinics only under four eyes.", soft_wrap=True, markup=False, highlight=False)


def _approve_plans(site_dirs: list[Path], specs: list, rounds: int, dp: tuple[float, float] | None,
                   *, noise_seed: int) -> None:
    """Each clinic's admin approves the demo's plans (as `fenji node approve` does) and sets its DP
    policy (noise seeded: a simulated demo only); show each clinic's line: the plans it runs, its
    minimum n, its DP policy and budget."""
    from node_agent.budget import spent
    from node_agent.policy import load_site_policy
    from simulation.engine import approve_at_sites

    digests = {spec.name: approve_at_sites(site_dirs, spec, rounds=rounds, dp=dp, noise_seed=noise_seed if dp else None)
               for spec in specs}
    table = Table("clinic", *[f"{name} ({digest[:8]})" for name, digest in digests.items()], "min n", "DP (ε per run)",
                  "ε spent / budget", title="2. Each clinic approves the plans it will run; its own policy decides "
                  "what leaves it (fenji node approve / policy)")
    for site_dir in site_dirs:
        policy = load_site_policy(site_dir)
        dp = policy.dp
        table.add_row(site_dir.name, *["approved" if d in policy.approved_plans else "–" for d in digests.values()],
                      str(policy.min_n), (f"on ({dp.epsilon_per_run:g}{', seeded' if dp.noise_seed is not None else ''})"
                                          if dp.enabled else "off"),
                      f"{spent(site_dir, period_days=dp.period_days):g} / {dp.budget_epsilon:g}")
    console.print(table)


def _show_budgets(site_dirs: list[Path]) -> None:
    """What the runs cost each clinic: its ledger's epsilon spent this period against its own budget."""
    from node_agent.budget import spent
    from node_agent.policy import load_site_policy

    table = Table("clinic", "DP (ε, δ per run)", "ε spent", "ε left", "budget per period",
                  title="Privacy budgets after the runs (each clinic's own ledger; fenji node status)")
    for site_dir in site_dirs:
        dp = load_site_policy(site_dir).dp
        used = spent(site_dir, period_days=dp.period_days)
        table.add_row(site_dir.name, f"{dp.epsilon_per_run:g}, {dp.delta:g}" if dp.enabled else "off", f"{used:g}",
                      f"{max(dp.budget_epsilon - used, 0):g}", f"{dp.budget_epsilon:g} / {dp.period_days} days")
    console.print(table)
