"""The ``fenji`` command: demo, node agent ingest, simulated federations."""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from federation.settings import Settings, configure_environment
from models.errors import FenjiError

configure_environment()
if "--verbose" not in sys.argv:
    # Third-party deprecation chatter (Ray, SQLAlchemy, torch.export) is noise for a clinic's operator.
    warnings.filterwarnings("ignore")
    logging.getLogger("torch._export").setLevel(logging.ERROR)
    logging.getLogger("torch.export").setLevel(logging.ERROR)

app = typer.Typer(help="Fenji (分级): privacy-preserving federated learning for tiered diagnosis.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
node_app = typer.Typer(help="Commands run by a clinic's node agent.", no_args_is_help=True)
app.add_typer(node_app, name="node")


def _token_app() -> typer.Typer:
    from node_agent.serve.cli import token_app

    return token_app


node_app.add_typer(_token_app(), name="token")
console = Console()
console.width = max(console.width, 120)  # the per-site tables need room; logs are not 80 wide


def _fail(exc: FenjiError) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(exc.exit_code)


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

    try:
        spec, mapping_ = load_task(task), load_mapping(mapping)
        with SiteStore(site_dir) as store:
            summary = ingest_file(store, spec, input, mapping_)
            total = store.count(spec)
    except FenjiError as exc:
        _fail(exc)
    if summary.already_ingested:
        console.print(f"{input} was already ingested for task {spec.name} with this mapping: nothing added.")
        return
    console.print(
        f"[bold]{input.name}[/] → {site_dir} ({spec.name}): read {summary.rows_read}, "
        f"[green]accepted {summary.accepted}[/], [yellow]quarantined {summary.quarantined}[/]; "
        f"{total} records in the store."
    )
    if summary.absent_columns:
        console.print(f"  columns not in the file (recorded as missing): {', '.join(summary.absent_columns)}")
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
                                                    "(default FENJI_MLFLOW_URI).")] = None,
    alias: Annotated[str, typer.Option(help="The registry alias governance approves versions under.")] = "production",
    host: Annotated[str, typer.Option(help="Bind address (the clinic's own network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8600,
) -> None:
    """Serve the workstation page and the scoring API at the clinic, with the approved models.

    The approved versions are fetched and their digests verified; if the registry cannot be
    reached, the last good versions on this node are served (scoring never leaves the clinic).
    """
    import uvicorn

    from node_agent.distribution import ModelDistribution
    from node_agent.serve import AdvisorHolder, create_app

    distribution = ModelDistribution(site_dir, registry or Settings().tracking_uri, alias=alias)
    try:
        advisor = distribution.load()
    except FenjiError as exc:
        _fail(exc)
    versions = ", ".join(f"{t} v{r.version}" for t, r in advisor.models.items())
    console.print(f"Serving {versions} at http://{host}:{port}/ (tokens: `fenji node token create --site-dir {site_dir}`)")
    app_ = create_app(AdvisorHolder(advisor), site_dir=site_dir, provider=distribution.fetch)
    uvicorn.run(app_, host=host, port=port, log_level="warning")


def _run_and_report(
    *, spec, site_dirs: list[Path], rounds: int, encrypt: bool, min_sites: int, json_out: Path | None,
    register: bool, settings: Settings, verbose: bool, title: str, dp: tuple[float, float] | None = None,
) -> dict:
    from federation.report import render, site_report, summarise
    from federation.simulation import pooled_reference, run_simulated_federation

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[auroc]}"), TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task(f"federated rounds ({'encrypted' if encrypt else 'plaintext'})", total=rounds, auroc="")
        outcome = run_simulated_federation(
            spec, site_dirs, rounds=rounds, encrypt=encrypt, min_sites=min_sites, verbose=verbose,
            dp_epsilon=dp[0] if dp else None, dp_delta=dp[1] if dp else 1e-3,
            on_round=lambda r, m: progress.update(bar, completed=r, auroc=f"mean AUROC {m.get('auroc', math.nan):.3f}"),
        )
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
    }
    if register:
        from coordinator.audit import AuditLog
        from coordinator.registry import register_outcome

        registered = register_outcome(outcome, tracking_uri=settings.tracking_uri, sites=sites)
        AuditLog(settings.audit_path).append(
            actor="coordinator", action="training-run", task=spec.name, rounds=rounds, encrypted=encrypt,
            sites=sorted(outcome.sites), model=registered.name, version=registered.version, run_id=registered.run_id,
        )
        report["registered"] = {"name": registered.name, "version": registered.version, "run_id": registered.run_id,
                                "tracking_uri": registered.tracking_uri}
        console.print(f"Registered [bold]{registered.name}[/] version {registered.version} in {registered.tracking_uri}")
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
    min_sites: Annotated[Optional[int], typer.Option(help="Fewest sites a decrypted aggregate may cover.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write per-site metrics here.")] = None,
    register: Annotated[bool, typer.Option("--register/--no-register", help="Register the model in MLflow.")] = True,
    dp_epsilon: Annotated[Optional[float], typer.Option(help="Record-level DP-SGD at each site: epsilon for the run.")] = None,
    dp_delta: Annotated[float, typer.Option(help="DP delta.")] = 1e-3,
    verbose: Annotated[bool, typer.Option(help="Show Flower's log.")] = False,
) -> None:
    """Run a federation on Flower's simulation engine over site folders, one SuperNode per site."""
    from federation.simulation import site_dirs_of
    from models.spec import load_task

    settings = Settings()
    try:
        spec = load_task(task)
        if not sites_dir.is_dir():
            raise FenjiError(f"no such folder: {sites_dir}")
        site_dirs = site_dirs_of(sites_dir)
        needed = min_sites if min_sites is not None else min(settings.min_sites, max(len(site_dirs), 1))
        if len(site_dirs) < needed:
            raise FenjiError(f"{len(site_dirs)} site folder(s) in {sites_dir}, at least {needed} needed")
        _run_and_report(spec=spec, site_dirs=site_dirs, rounds=rounds, encrypt=encryption, min_sites=needed,
                        json_out=json_out, register=register, settings=settings, verbose=verbose,
                        dp=(dp_epsilon, dp_delta) if dp_epsilon else None,
                        title=f"{spec.name}: held-out AUROC per site")
    except FenjiError as exc:
        _fail(exc)


@app.command("demo")
def demo_command(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its clinics, stores and registry.")] = Path("fenji-demo"),
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

    if workdir.exists():
        shutil.rmtree(workdir)
    settings = Settings(home=workdir / "coordinator")
    specs = [load_task(name) for name in tasks.split(",")]
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
                      ", ".join(summary.absent_columns) or "–")
    console.print(table)
    console.print("2. Federated statistics, training and calibration: sites send only CKKS ciphertexts; "
                  "a separate key-holder process decrypts sums over ≥ 3 sites.")
    results = {}
    for step, spec in enumerate(specs, start=3):
        console.rule(f"[bold]{step}. {spec.name} ({spec.label.kind})")
        try:
            results[spec.name] = _run_and_report(
                spec=spec, site_dirs=site_dirs, rounds=rounds, encrypt=encryption, min_sites=3,
                json_out=workdir / f"demo-{spec.name}.json", register=True, settings=settings, verbose=verbose,
                title=f"{spec.name}, held-out",
            )
        except FenjiError as exc:
            _fail(exc)
    console.print(f"MLflow UI: mlflow ui --backend-store-uri {settings.tracking_uri}")
    _demo_login(workdir, settings, site_dirs[0], [s.name for s in specs])


def _demo_login(workdir: Path, settings: Settings, site_dir: Path, tasks: list[str]) -> None:
    """Approve the demo's versions for the clinics (audited) and print how a doctor logs in."""
    from coordinator.audit import AuditLog
    from coordinator.registry import model_name, promote
    from node_agent.serve.cli import create_token

    if sorted(tasks) != ["diagnosis", "referral_risk", "triage"]:
        return
    for task in tasks:
        digest = promote(task, "1", tracking_uri=settings.tracking_uri)
        AuditLog(settings.audit_path).append(actor="demo", action="promotion", task=task, model=model_name(task),
                                             version="1", alias="production", bundle_sha256=digest)
    token = create_token(site_dir, role="doctor", name="Demo doctor").token
    console.rule("[bold]The doctor's workstation")
    console.print(f"fenji node serve --site-dir {site_dir} --registry {settings.tracking_uri}\n"
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
    """Approve a model version for the clinics: point the alias at it, and audit the decision."""
    from coordinator.audit import AuditLog
    from coordinator.registry import model_name, promote

    settings = Settings()
    try:
        digest = promote(task, version, tracking_uri=settings.tracking_uri, alias=alias)
    except FenjiError as exc:
        _fail(exc)
    AuditLog(settings.audit_path).append(actor=actor, action="promotion", task=task, model=model_name(task),
                                         version=version, alias=alias, bundle_sha256=digest)
    console.print(f"{model_name(task)} version {version} is now '{alias}' (bundle sha256 {digest[:16]}…).")


BENCHMARKS = ("heart", "he-overhead", "scale", "serving")


@app.command("bench")
def bench_command(
    name: Annotated[str, typer.Argument(help=f"Benchmark to run: {', '.join(BENCHMARKS)}.")],
    json_out: Annotated[Path, typer.Option("--json", help="Write inputs, environment and every figure here.")],
    repeats: Annotated[int, typer.Option(min=1, help="Repeats per configuration.")] = 3,
    sizes: Annotated[str, typer.Option(help="he-overhead: model sizes (parameters), comma-separated.")] = "1000,100000,1000000",
    sites: Annotated[str, typer.Option(help="he-overhead: number of sites; scale: site counts, comma-separated.")] = "",
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG plot here.")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="heart: seeds (model init and shuffling).")] = 5,
    rounds: Annotated[int, typer.Option(min=1, help="heart: federated rounds (one local epoch each).")] = 60,
    duration: Annotated[float, typer.Option(min=1, help="serving: seconds of load per measurement.")] = 10.0,
    connections: Annotated[str, typer.Option(help="serving: concurrent connections, comma-separated.")] = "1,8,32",
) -> None:
    """Run a benchmark, print its table and write its JSON (and plot)."""
    from bench.common import write_json

    if name not in BENCHMARKS:
        console.print(f"[bold red]error:[/] unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}")
        raise typer.Exit(2)
    if name == "heart":
        _bench_heart(json_out, plot, seeds=seeds, rounds=rounds)
        return
    if name == "scale":
        _bench_scale(json_out, plot, sites=[int(s) for s in (sites or "10,50,100").split(",")])
        return
    if name == "serving":
        _bench_serving(json_out, plot, repeats=repeats, duration=duration,
                       connections=tuple(int(c) for c in connections.split(",") if c.strip()))
        return
    n_sites = int(sites or 10)
    from bench import he_overhead

    size_list = [int(s) for s in sizes.split(",") if s.strip()]
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("he-overhead", total=len(size_list) * repeats)
        report = he_overhead.run(sizes=size_list, sites=n_sites, repeats=repeats,
                                 progress=lambda: progress.advance(bar))
    table = Table("parameters", "round s (plain)", "round s (CKKS)", "time ratio", "bytes/site (float32)",
                  "bytes/site (CKKS)", "bytes ratio", "max error", title=f"CKKS overhead, {n_sites} sites (median)")
    for r in report["results"]:
        table.add_row(f"{r['parameters']:,}", f"{r['round_seconds_plaintext']['median']:.3f}",
                      f"{r['round_seconds_encrypted']['median']:.3f}", f"{r['round_time_ratio']['median']:.2f}×",
                      f"{r['bytes_per_site_plaintext_float32']:,}", f"{r['bytes_per_site_encrypted']:,}",
                      f"{r['bytes_ratio']:.1f}×", f"{r['max_decryption_error']['max']:.1e}")
    console.print(table)
    write_json(json_out, report)
    if plot:
        he_overhead.plot(report, plot)
    console.print(f"Results written to {json_out}" + (f" and {plot}" if plot else ""))


def _bench_scale(json_out: Path, plot: Path | None, *, sites: list[int]) -> None:
    from bench import scale
    from bench.common import write_json

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("scale: site counts", total=len(sites))
        report = scale.run(sites=sites, progress=lambda: progress.advance(bar))
    table = Table("sites", "parameters", "round s (median)", "aggregate s (median)", "coordinator peak RSS MB",
                  "total s", title="Encrypted FedAvg at scale")
    for r in report["results"]:
        table.add_row(str(r["sites"]), f"{r['parameters']:,}", f"{r['round_seconds']['median']:.2f}",
                      f"{r['aggregate_seconds']['median']:.3f}", f"{r['coordinator_peak_rss_mb']:.0f}",
                      f"{r['total_seconds']:.0f}")
    console.print(table)
    write_json(json_out, report)
    if plot:
        scale.plot(report, plot)
    console.print(f"Results written to {json_out}" + (f" and {plot}" if plot else ""))


def _bench_serving(json_out: Path, plot: Path | None, *, repeats: int, duration: float,
                   connections: tuple[int, ...]) -> None:
    from bench import serving
    from bench.common import write_json

    runs = repeats * (2 * len(connections) + 2) + 2  # + training, + the switch
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("serving", total=runs)

        def step(name: str) -> None:
            progress.update(bar, description=f"serving: {name}", advance=0 if name.startswith("training") else 1)

        try:
            report = serving.run(connections=connections, duration=duration, repeats=repeats, progress=step)
        except serving.BenchError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from None
        progress.update(bar, completed=runs)
    res = report["results"]
    table = Table("connections", "bare req/s", "/score req/s", "ratio", "bare p50 / p99 ms", "/score p50 / p99 ms",
                  title=f"Single-patient scoring vs a bare FastAPI endpoint (median of {repeats})")
    for bare, fenji, cmp in zip(res["single"]["bare"], res["single"]["fenji"], res["comparison"]):
        table.add_row(str(bare["connections"]), f"{bare['requests_per_second']:,.0f}",
                      f"{fenji['requests_per_second']:,.0f}", f"{cmp['throughput_ratio']:.0%}",
                      f"{bare['latency_ms']['p50']:.1f} / {bare['latency_ms']['p99']:.1f}",
                      f"{fenji['latency_ms']['p50']:.1f} / {fenji['latency_ms']['p99']:.1f}")
    console.print(table)
    batch, switch = res["batch"], res["switch"]
    console.print(f"Batch of {report['inputs']['batch_rows']}: {batch['http_rows_per_second']:,.0f} patients/s over HTTP, "
                  f"{batch['in_process_rows_per_second']['assess']:,.0f}/s in-process ({batch['rows_ratio']:.0%}).")
    console.print(f"Model switch under load: {switch['requests']:,} requests, {switch['failed']} failed, "
                  f"{switch['reloads_ok']}/{switch['reloads']} reloads, versions served {switch['versions_served']}, "
                  f"{switch['mixed_answers']} mixed answers.")
    for goal, g in report["goals"].items():
        console.print(f"  {goal}: goal {g['goal']}, measured {g['measured']:.3g}: "
                      + ("[green]met[/]" if g["met"] else "[yellow]not met[/]"))
    write_json(json_out, report)
    if plot:
        serving.plot(report, plot)
    console.print(f"Results written to {json_out}" + (f" and {plot}" if plot else ""))


def _bench_heart(json_out: Path, plot: Path | None, *, seeds: int, rounds: int) -> None:
    from bench import heart
    from bench.common import write_json

    data_dir = Settings().data_dir
    if not (data_dir / "uci_heart_disease").is_dir():
        console.print(f"[bold red]error:[/] UCI heart disease data not found under {data_dir} (set FENJI_DATA_DIR)")
        raise typer.Exit(2)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("heart: seeds", total=seeds)
        report = heart.run(data_dir=data_dir, seeds=seeds, rounds=rounds, progress=lambda: progress.advance(bar))
    res = report["results"]
    table = Table("method", "mean accuracy (± sd)", "mean AUROC", *heart.HOSPITALS,
                  title=f"Fed-Heart-Disease, FLamby split, {seeds} seed(s): accuracy per hospital")
    flamby = heart.ANCHORS
    for method, label in [("local_only", "local only"), ("pooled", "pooled"), ("fenji_encrypted", "Fenji FedAvg (CKKS)"),
                          ("fenji_encrypted_dp", "Fenji + DP ε=1, δ=1e-3")]:
        r = res[method]
        table.add_row(label, f"{r['mean_accuracy']['mean']:.3f} ± {r['mean_accuracy']['sd']:.3f}",
                      f"{r['mean_auroc']['mean']:.3f}", *(f"{r['per_hospital_accuracy'][h]:.3f}" for h in heart.HOSPITALS))
    table.add_row("FLamby local only", "", "", *(f"{flamby['local'][h]:.3f}" for h in heart.HOSPITALS))
    table.add_row("FLamby pooled / FedAvg / FedYogi / DP ε=1",
                  f"{flamby['pooled']} / {flamby['fedavg']} / {flamby['fedyogi']} / {flamby['dp_eps1']}", "")
    console.print(table)
    write_json(json_out, report)
    if plot:
        heart.plot(report, plot)
    console.print(f"Results written to {json_out}" + (f" and {plot}" if plot else ""))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
