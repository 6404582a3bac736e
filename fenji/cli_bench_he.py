"""``fenji bench he-overhead`` and the reports it gathers in one run (issue 17): the bare loop, Flower's
SecAgg+, whole runs on Flower's engine, the coordinator-memory sweep and every mode at 10 / 100 / 300 sites.
Each report builder prints its table; ``fenji bench engine-overhead / coordinator-memory / scale`` run one alone."""

from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fenji.cli_bench_io import console, ints, write_results
from models.errors import FenjiError

__all__ = ["bench_he_overhead", "coordinator_memory_report", "engine_overhead_report", "scale_report"]


def bench_he_overhead(json_out: Path, plot: Path | None, *, sites: str, sizes: str, repeats: int, full: bool,
                      scale_rounds: int = 4) -> None:
    """The bare loop and SecAgg+ (``--quick``); with ``full``, also the engine, memory and site-count reports,
    all in the one JSON."""
    site_counts = ints(sites, "--sites")
    if len(site_counts) != 1:
        raise FenjiError(f"he-overhead takes one number of sites, not {sites!r}")
    n_sites = site_counts[0]
    from bench import he_overhead

    size_list = ints(sizes, "--sizes")
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
    checks = Table("parameters", "tags ms/site", "signature check ms/site", "inputs digest ms/site", "tag bytes/site",
                   "key holder checks ms/round", "HTTP hop ms/round", "share of CKKS round",
                   title="What the checks cost (median)")
    for r in report["results"]:
        site, rnd = r["checks"]["per_site"], r["checks"]["per_round"]
        checks.add_row(f"{r['parameters']:,}", f"{site['tags_seconds'] * 1e3:.2f}",
                       f"{site['verify_signature_seconds'] * 1e3:.2f}", f"{site['inputs_digest_seconds'] * 1e3:.2f}",
                       f"{site['trailer_bytes']:,}",
                       f"{rnd['keyholder_checks_seconds'] * 1e3:.1f}", f"{rnd['http_hop_seconds'] * 1e3:.1f}",
                       f"{rnd['share_of_encrypted_round']:.0%}")
    console.print(checks)
    variants = Table("parameters", "encryption", "bytes/site", "bytes ratio", "round s", "time ratio", "max error",
                     title="The same round: Fenji CKKS, Fenji packed, NVFlare's CKKS (median; goals ≤ 2× bytes, ≤ 1.1× time)")
    for r in report["results"]:
        variants.add_row(f"{r['parameters']:,}", "Fenji CKKS", f"{r['bytes_per_site_encrypted']:,}",
                         f"{r['bytes_ratio']:.2f}×", f"{r['round_seconds_encrypted']['median']:.3f}",
                         f"{r['round_time_ratio']['median']:.2f}×", f"{r['max_decryption_error']['max']:.1e}")
        for name, label in (("packed", "Fenji packed"), ("nvflare", "NVFlare's CKKS")):
            v = r["variants"][name]
            variants.add_row("", label, f"{v['bytes_per_site']:,}", f"{v['bytes_ratio']:.2f}×",
                             f"{v['round_seconds']['median']:.3f}", f"{v['round_time_ratio']['median']:.2f}×",
                             f"{v['max_error']['max']:.1e}")
    console.print(variants)
    # The masking anchor: Flower's SecAgg+ workflow on the simulation engine, beside plain FedAvg.
    from bench.secagg import run_secagg

    with console.status("he-overhead: Flower's SecAgg+ on the simulation engine…"):
        report["secagg"] = run_secagg(sizes=size_list, sites=max(n_sites, 3))
    secagg = Table("parameters", "bytes/site (SecAgg+)", "bytes ratio", "round s (plain)", "round s (SecAgg+)",
                   "time ratio", title="Flower SecAgg+ (anchor), same model shapes (median)")
    for r in report["secagg"]["results"]:
        secagg.add_row(f"{r['parameters']:,}", f"{r['bytes_per_site_secagg']['median']:,.0f}", f"{r['bytes_ratio']:.2f}×",
                       f"{r['round_seconds_plain']['median']:.3f}", f"{r['round_seconds_secagg']['median']:.3f}",
                       f"{r['round_time_ratio']:.2f}×")
    console.print(secagg)
    if full:
        # The same comparison where it counts: whole runs on Flower's engine (demo clinics, realistic
        # local training), then the coordinator's peak memory at 10 / 100 / 300 sites.
        report["engine"] = engine_overhead_report()
        report["coordinator_memory"] = coordinator_memory_report([10, 100, 300], 100_000)
        # Every mode (SecAgg+ included) through Flower's engine on the clinics at 10 / 100 / 300 sites.
        report["scale"] = scale_report([10, 100, 300], [], rounds=scale_rounds)  # [] = every mode
    write_results(json_out, plot, report, he_overhead.plot)


def engine_overhead_report() -> dict:
    from bench import engine_overhead

    table = Table("model", "parameters", "mode", "round s", "time ratio", "update bytes/site", "bytes / float32",
                  "mean AUROC", title="Whole runs on Flower's simulation engine, demo clinics (median round)")
    with console.status("engine-overhead: plaintext, CKKS and packed runs per model…"):
        report = engine_overhead.run(progress=lambda p: console.print(
            f"  {p['model']} {p['mode']}: {p['round_seconds']['median']:.2f} s per round"))
    for p in report["points"]:
        table.add_row(p["model"], f"{p['parameters']:,}", p["mode"], f"{p['round_seconds']['median']:.2f}",
                      f"{p['round_time_ratio']:.2f}×", f"{p['update_bytes_per_site']:,.0f}",
                      f"{p['bytes_ratio_float32']:.2f}×", f"{p['mean_auroc']:.4f}")
    console.print(table)
    return report


def coordinator_memory_report(sites: list[int], params: int) -> dict:
    from bench import coordinator_memory

    table = Table("sites", "mode", "peak memory MB", "above baseline MB", "reply bytes/site", "seconds",
                  title=f"Coordinator memory, one round, {params:,} parameters (plaintext, Fenji, NVFlare HE, "
                        "Flower SecAgg+)")
    with console.status("coordinator-memory: the sites' side, then one fresh process per point…"):
        report = coordinator_memory.run(sites=sites, params=params, on_point=lambda p: table.add_row(
            str(p["sites"]), p["mode"], f"{p['peak_rss_mb']:.0f}", f"{p['added_mb']:.0f}", f"{p['reply_bytes']:,}",
            f"{p['seconds']:.1f}"))
    console.print(table)
    return report


def scale_report(sites: list[int], modes: list[str], *, rounds: int) -> dict:
    """Every mode at each number of sites on Flower's engine (``bench.scale``), one fresh process per point."""
    from bench import scale

    modes = modes or list(scale.MODES)
    with console.status(f"scale: {', '.join(modes)} at {', '.join(map(str, sites))} sites, one process per point…"):
        report = scale.run(sites=sites, modes=modes, rounds=rounds, on_point=lambda p: console.print(
            f"  {p['sites']} sites, {p['mode']}: {p['total_seconds']:.0f} s"))
    table = Table("sites", "mode", "params", "round s", "× base", "add s", "bytes/site", "× f32", "MB base / peak",
                  "AUROC", "point s", title=f"Flower's simulation engine, referral risk, {rounds} rounds (round s: "
                  "median of rounds 2..; × base: over plaintext at the same sites, secagg over Flower's plain fit "
                  "round; add s: the aggregator's; MB: the coordinator process)")
    for p in report["points"]:
        ratio = scale.time_ratio(report, p)
        table.add_row(str(p["sites"]), p["mode"], f"{p['parameters']:,}",
                      f"{p['round_seconds']['median']:.2f}" if p["round_seconds"] else "-",
                      f"{ratio:.2f}×" if ratio else "-",
                      f"{p['aggregate_seconds']['median']:.3f}" if p["aggregate_seconds"] else "-",
                      f"{p['update_bytes_per_site']:,.0f}", f"{p['bytes_ratio_float32']:.2f}×",
                      f"{p['coordinator_baseline_mb']:.0f} / {p['coordinator_peak_mb']:.0f}",
                      f"{p['mean_auroc']:.4f}" if p["mean_auroc"] is not None else "-", f"{p['point_wall_seconds']:.0f}")
    console.print(table)
    return report
