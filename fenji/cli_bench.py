"""``fenji bench``: run a benchmark (``bench/``), print its table, write its JSON and plot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.errors import BenchUnavailable
from fenji.cli_bench_he import (
    bench_he_overhead,
    coordinator_memory_report,
    engine_overhead_report,
    scale_report,
)
from fenji.cli_bench_io import console, ints, write_results
from fenji.cli_guard import output_file
from fenji.settings import load_shell_settings

__all__ = ["BENCHMARKS", "bench_command"]

BENCHMARKS = ("coordinator-memory", "engine-overhead", "heart", "heart-packing", "he-overhead", "membership",
              "packed-metrics", "scale", "serving", "surveillance", "text-gain")


def bench_command(
    name: Annotated[str, typer.Argument(help=f"Benchmark to run: {', '.join(BENCHMARKS)}.")],
    json_out: Annotated[Path, typer.Option("--json", help="Write inputs, environment and every figure here.")],
    repeats: Annotated[int, typer.Option(min=1, help="Repeats per configuration.")] = 3,
    sizes: Annotated[str, typer.Option(help="he-overhead: model sizes (parameters), comma-separated.")] = "1000,100000,1000000",
    sites: Annotated[str, typer.Option(help="he-overhead: number of sites; scale: site counts, comma-separated.")] = "",
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG plot here.")] = None,
    seeds: Annotated[int, typer.Option(
        min=1, help="heart, membership: seeds (model init and shuffling); text-gain: 1 unless given; "
                    "surveillance: synthetic federations.")] = 5,
    rounds: Annotated[int | None, typer.Option(
        min=1, help="heart: federated rounds, one local epoch each (60); text-gain: FedAvg rounds (8); "
                    "packed-metrics: rounds of each run (8); scale: rounds of each run (3).")] = None,
    modes: Annotated[str, typer.Option(
        help="scale: modes, comma-separated (plaintext, ckks, packed, nvflare, secagg; default all).")] = "",
    epochs: Annotated[int, typer.Option(min=1, help="membership: training epochs per model.")] = 75,
    duration: Annotated[float, typer.Option(min=1, help="serving: seconds of load per measurement.")] = 10.0,
    connections: Annotated[str, typer.Option(help="serving: concurrent connections, comma-separated.")] = "1,8,32",
    full: Annotated[bool, typer.Option(
        "--full/--quick", help="he-overhead: also run whole rounds on Flower's engine (the demo clinics), the "
                               "coordinator-memory sweep and every mode (plaintext, Fenji CKKS, packed, NVFlare's "
                               "parameters, Flower SecAgg+) on the engine at 10/100/300 clinics, in the same report "
                               "(about an hour on 2 cores).")] = True,
) -> None:
    """Run a benchmark, print its table and write its JSON (and plot)."""

    if name not in BENCHMARKS:
        raise BenchUnavailable(f"unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}")
    # Every option is checked before a run that may take minutes, not when its results are written.
    output_file(json_out, "--json file")
    if plot:
        output_file(plot, "--plot file")
    if name == "heart":
        _bench_heart(json_out, plot, seeds=seeds, rounds=rounds or 60)
        return
    if name == "heart-packing":
        _bench_heart_packing(json_out, seeds=seeds, rounds=rounds or 60)
        return
    if name == "text-gain":
        from click import get_current_context
        from click.core import ParameterSource

        seeds_given = get_current_context().get_parameter_source("seeds") is not ParameterSource.DEFAULT
        _bench_text_gain(json_out, plot, seeds=seeds if seeds_given else 1, rounds=rounds or 8)
        return
    if name == "membership":
        _bench_membership(json_out, plot, seeds=seeds, epochs=epochs)
        return
    if name == "surveillance":
        _bench_surveillance(json_out, plot, seeds=seeds)
        return
    if name == "engine-overhead":
        _bench_engine_overhead(json_out, plot)
        return
    if name == "packed-metrics":
        _bench_packed_metrics(json_out, plot, rounds=rounds or 8)
        return
    if name == "coordinator-memory":
        _bench_coordinator_memory(json_out, plot, sites=ints(sites or "10,100,300", "--sites"),
                                  params=ints(sizes if sizes != "1000,100000,1000000" else "100000", "--sizes")[0])
        return
    if name == "scale":
        from bench import scale

        write_results(json_out, plot, scale_report(ints(sites or "10,100,300", "--sites"),
                                                   [m.strip() for m in modes.split(",") if m.strip()],
                                                   rounds=rounds or 3), scale.plot)
        return
    if name == "serving":
        _bench_serving(json_out, plot, repeats=repeats, duration=duration,
                       connections=tuple(ints(connections, "--connections")))
        return
    bench_he_overhead(json_out, plot, sites=sites or "10", sizes=sizes, repeats=repeats, full=full)


def _bench_engine_overhead(json_out: Path, plot: Path | None) -> None:
    from bench import engine_overhead

    write_results(json_out, plot, engine_overhead_report(), engine_overhead.plot)


def _bench_packed_metrics(json_out: Path, plot: Path | None, *, rounds: int) -> None:
    from bench import packed_metrics

    with console.status(f"packed-metrics: each task in plaintext, CKKS and packed, {rounds} rounds…"):
        report = packed_metrics.run(rounds=rounds, progress=lambda task, mode, p: console.print(
            f"  {task} {mode}: " + ", ".join(f"{m} {v:.4f}" for m, v in p["mean"].items())))
    table = Table("task", "metric", *report["inputs"]["modes"],
                  *(f"{m} − plaintext: mean / largest clinic" for m in report["inputs"]["modes"] if m != "plaintext"),
                  title=f"Mean held-out metrics over the demo clinics, {rounds} rounds, no DP")
    for row in packed_metrics.table_rows(report):
        table.add_row(*row)
    console.print(table)
    console.print(f"{report['goal']['text']}: {'met' if report['goal']['met'] else 'missed'} "
                  f"(largest difference {report['goal']['largest_difference']:.1e})")
    write_results(json_out, plot, report, packed_metrics.plot)


def _bench_coordinator_memory(json_out: Path, plot: Path | None, *, sites: list[int], params: int) -> None:
    from bench import coordinator_memory

    write_results(json_out, plot, coordinator_memory_report(sites, params), coordinator_memory.plot)


def _bench_serving(json_out: Path, plot: Path | None, *, repeats: int, duration: float,
                   connections: tuple[int, ...]) -> None:
    from bench import serving

    runs = repeats * (3 * len(connections) + 2) + 2  # + the MLflow anchor's answers check, + the switch
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("serving", total=runs)

        def step(name: str) -> None:
            progress.update(bar, description=f"serving: {name}", advance=0 if name.startswith("training") else 1)

        report = serving.run(connections=connections, duration=duration, repeats=repeats, progress=step)
        progress.update(bar, completed=runs)
    res = report["results"]
    table = Table("connections", "bare req/s", "/score req/s", "ratio", "mlflow serve req/s", "bare p50 / p99 ms",
                  "/score p50 / p99 ms", "mlflow serve p50 / p99 ms",
                  title=f"Single-patient scoring vs a bare FastAPI endpoint and `mlflow models serve` (median of {repeats})")
    for bare, fenji, mlf, cmp in zip(res["single"]["bare"], res["single"]["fenji"], res["single"]["mlflow"],
                                     res["comparison"]):
        table.add_row(str(bare["connections"]), f"{bare['requests_per_second']:,.0f}",
                      f"{fenji['requests_per_second']:,.0f}", f"{cmp['throughput_ratio']:.0%}",
                      f"{mlf['requests_per_second']:,.0f}",
                      *(f"{r['latency_ms']['p50']:.1f} / {r['latency_ms']['p99']:.1f}" for r in (bare, fenji, mlf)))
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
    write_results(json_out, plot, report, serving.plot)


def _bench_membership(json_out: Path, plot: Path | None, *, seeds: int, epochs: int) -> None:
    from bench import membership

    datasets = membership.default_datasets(load_shell_settings().data_dir)
    total = len(datasets) * 2 * (1 + len(membership.EPSILONS)) * seeds
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("membership: models", total=total)
        report = membership.run(datasets=datasets, seeds=seeds, epochs=epochs, progress=lambda: progress.advance(bar))
        progress.update(bar, completed=total)  # refused DP settings and absent data sets train nothing
    console.print(membership.table(report))
    for name, reason in report["inputs"]["unavailable"].items():
        console.print(f"[yellow]{name} skipped[/]: {reason}")
    write_results(json_out, plot, report, membership.plot)


def _bench_surveillance(json_out: Path, plot: Path | None, *, seeds: int) -> None:
    from bench import surveillance

    with console.status(f"surveillance: {seeds} seed(s), with and without the complaint text…"):
        report = surveillance.run(seeds=seeds)
    table = Table(*surveillance.SUMMARY_COLUMNS, title="EARS on the synthetic districts' syndrome series, a year, "
                  f"{seeds} seed(s)")
    for row in surveillance.summary_rows(report):
        table.add_row(*row)
    console.print(table)
    write_results(json_out, plot, report, surveillance.plot)


def _bench_text_gain(json_out: Path, plot: Path | None, *, seeds: int, rounds: int) -> None:
    from bench import text_gain

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("text-gain: task x training", total=2 * len(text_gain.TASKS))
        report = text_gain.run(seeds=seeds, rounds=rounds, progress=lambda: progress.advance(bar))
    table = Table("task", "metric", "training", "without text", "with text", "gain",
                  title=f"Free-text chief complaint, {len(report['inputs']['clinics'])} synthetic clinics "
                        "(mean over clinics)")
    for task, modes in report["results"].items():
        for mode, result in modes.items():
            for metric, gain in result["gain"].items():
                table.add_row(task, metric, mode, f"{result['without']['means'][metric]:.3f}",
                              f"{result['with']['means'][metric]:.3f}", f"{gain:+.3f}")
    console.print(table)
    write_results(json_out, plot, report, text_gain.plot)


def _bench_heart_packing(json_out: Path, *, seeds: int, rounds: int) -> None:
    from bench import heart

    data_dir = load_shell_settings().data_dir
    if not (data_dir / "uci_heart_disease").is_dir():
        raise BenchUnavailable(f"UCI heart disease data not found under {data_dir} (set FENJI_DATA_DIR)")
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("heart-packing: seeds (packed and CKKS runs)", total=seeds)
        report = heart.packing_check(data_dir=data_dir, seeds=seeds, rounds=rounds,
                                     progress=lambda: progress.advance(bar))
    table = Table("seed", "packed: mean accuracy", "CKKS: mean accuracy", "packed: mean AUROC", "CKKS: mean AUROC",
                  title=f"Fed-Heart-Disease, {rounds} encrypted rounds: packed vs CKKS updates")
    for seed, (p, c) in enumerate(zip(report["per_seed"]["packed"], report["per_seed"]["ckks"], strict=True)):
        table.add_row(str(seed), f"{p['mean_accuracy']:.4f}", f"{c['mean_accuracy']:.4f}",
                      f"{p['mean_auroc']:.4f}", f"{c['mean_auroc']:.4f}")
    console.print(table)
    verdict = "met" if report["goal"]["met"] else "missed"
    console.print(f"same mean accuracy to 3 decimals on every seed: {verdict}; largest differences "
                  f"{report['max_abs_difference']['mean_accuracy']:.2e} (accuracy), "
                  f"{report['max_abs_difference']['mean_auroc']:.2e} (AUROC)")
    write_results(json_out, None, report, None)


def _bench_heart(json_out: Path, plot: Path | None, *, seeds: int, rounds: int) -> None:
    from bench import heart

    data_dir = load_shell_settings().data_dir
    if not (data_dir / "uci_heart_disease").is_dir():
        raise BenchUnavailable(f"UCI heart disease data not found under {data_dir} (set FENJI_DATA_DIR)")
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
    write_results(json_out, plot, report, heart.plot)
