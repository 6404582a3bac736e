"""Run a federation on the simulation engine and report it: progress while it runs, the per-site
tables and claims after, the JSON report, the registered version and its audit entry."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from coordinator.audit import AuditLog
from coordinator.settings import CoordinatorSettings
from models.errors import FenjiError

__all__ = ["audit_log", "console", "run_and_report"]

console = Console()
console.width = max(console.width, 120)  # the per-site tables need room; logs are not 80 wide


def countersign(settings: CoordinatorSettings) -> None:
    from coordinator.service.training_log import countersign as record_head

    record_head(settings)


def audit_log(settings: CoordinatorSettings) -> AuditLog:
    return AuditLog(settings.audit_path)


def run_and_report(
    *, spec, site_dirs: list[Path], rounds: int, encrypt: bool, json_out: Path | None,
    register: bool, settings: CoordinatorSettings, verbose: bool, title: str, dp: tuple[float, float] | None = None,
) -> dict:
    from keyholder.settings import load_keyholder_settings
    from simulation.engine import pooled_reference, run_simulated_federation
    from simulation.report import render, site_report, summarise

    # On one machine the key holder's folder is under the coordinator's FENJI_HOME unless
    # FENJI_KEYHOLDER_HOME says otherwise; min-sites is the key holder's own setting.
    keyholder = load_keyholder_settings(home=settings.home)

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
                spec, site_dirs, rounds=rounds, encrypt=encrypt, keyholder_home=keyholder.state_dir, verbose=verbose,
                dp_epsilon=dp[0] if dp else None, dp_delta=dp[1] if dp else 1e-3, on_round=on_round,
            )
        except FenjiError as exc:  # a refused or failed run is part of the record too
            if register:
                audit_log(settings).append(actor="coordinator", action="training-run-failed", task=spec.name,
                                            rounds=rounds, encrypted=encrypt, reason=str(exc),
                                            error=type(exc).__name__)
                countersign(settings)
            raise
    with console.status("pooled reference: one model on all sites' training rows (only a simulation can do this)"):
        pooled = pooled_reference(spec, site_dirs, epochs=rounds * spec.model.local_epochs)
    sites = site_report(outcome, pooled)
    summary = summarise(spec, sites)
    for table in render(spec, sites, summary, title):
        console.print(table)
    for metric, claim in summary["claims"].items():
        beats = ("[green]beat local-only at every site[/]" if claim["beats_local_only_at_every_site"]
                 else f"[yellow]do not beat local-only at {', '.join(claim['sites_not_beating_local'])}[/]")
        near = "[green]within 0.02 of pooled[/]" if claim["within_0.02_of_pooled"] else "[yellow]more than 0.02 below pooled[/]"
        console.print(f"{metric}: the sites' models {beats}; mean {near} (gap {claim['gap_to_pooled']:+.3f}).")
    cal = outcome.calibration
    console.print(f"Federated calibration: {cal.kind}" + (
        f" (slope {cal.slope:.2f}, intercept {cal.intercept:+.2f})" if cal.kind == "platt"
        else f" (temperature {cal.temperature:.2f})" if cal.kind == "temperature" else ""))
    report = {
        "task": spec.name, "rounds": rounds, "encrypted": encrypt, "min_sites": keyholder.min_sites,
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
        audit_log(settings).append(
            actor="coordinator", action="training-run", task=spec.name, rounds=rounds, encrypted=encrypt,
            sites=sorted(outcome.sites), model=registered.name, version=registered.version, run_id=registered.run_id,
            excluded=report["excluded"], site_audit_heads=outcome.site_audit_heads,
        )
        countersign(settings)  # where the service runs, the log's new head goes under its countersigned chain
        report["registered"] = {"name": registered.name, "version": registered.version, "run_id": registered.run_id,
                                "tracking_uri": registered.tracking_uri}
        console.print(f"Registered [bold]{registered.name}[/] version {registered.version} in {registered.tracking_uri}",
                      soft_wrap=True)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2, default=float))
        console.print(f"Per-site metrics written to {json_out}")
    return report
