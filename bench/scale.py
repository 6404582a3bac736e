"""Scale: whole federated runs on Flower's simulation engine at 10 / 100 / 300 sites, on the clinics of
``bench.clinics`` (referral risk, a ~100k-parameter MLP, each site's own local training), in five modes:

- ``plaintext``: FedAvg of the float64 arrays Fenji sends without encryption;
- ``ckks``: Fenji as it was, CKKS with one slot per value (``federation.crypto.CKKSParams()``: N = 8192,
  moduli [60, 60], scale 2^40);
- ``packed``: Fenji packed, BFV with two fixed-point values per slot (``federation.packing``);
- ``nvflare``: NVFlare's TenSEAL parameters inside Fenji's protocol: Fenji's CKKS updates, aggregation and key
  holder, with the key holder's CKKS context made as NVFlare configures its own (N = 8192, moduli
  [60, 40, 40], scale 2^40: one more prime, so each ciphertext is larger). NVFlare's own message format and
  aggregator are modelled in ``bench.coordinator_memory`` / ``bench.nvflare_aggregator``, not here;
- ``secagg``: Flower's SecAgg+ workflow on the same clinics, run by ``python -m bench.secagg_sites``.

Each (sites, mode) point runs in a fresh process (``python -m bench.scale <mode> <sites> <rounds> <rows>``,
one JSON line out), so its peak memory is its own. Which process holds what in that run
(``simulation.engine``, flwr 1.41):

- the measured process (the "coordinator"): the ServerApp, in a thread, with Fenji's strategy and its
  aggregator (the running sum of the sites' ciphertexts or arrays); Flower's in-memory link state, which keeps
  every message (each site's update) until the ServerApp has taken it; and the simulation engine's driver,
  which hands those messages between the link state and Ray;
- Ray's workers (other processes, two actors on this 2-CPU machine): every site's ClientApp (its local
  training and encryption), one site after another; Ray's own GCS and raylet run in processes of their own;
- the key holder: its own process (``python -m keyholder serve``, started by ``simulation.engine.run_key_holder``),
  reached over HTTP on loopback; it holds the secret keys and decrypts only the aggregate.

So "coordinator peak MB" is the measured process's VmHWM during the run: the ServerApp, the aggregator, the
link state and the engine's driver, plus what the process held before (its baseline). The baseline
(``coordinator_baseline_mb``, VmRSS just before the run, after ``bench.common.reset_peak``) is the interpreter,
the imported libraries (Flower, Ray's client, PyTorch, TenSEAL, DuckDB) and what preparing the clinics left
behind. The key holder's and the Ray workers' memory is not in it; pages of Ray's shared object store that
the driver reads are (they count in its RSS).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.clinics import HIDDEN, clinical_spec, prepare_sites
from bench.common import current_rss_mb, environment, peak_kb, reset_peak, save_figure, spread, subplots
from bench.errors import BenchUnavailable

__all__ = ["LABELS", "MODES", "NVFLARE_PARAMS", "draw_time_ratios", "plot", "point", "run", "run_point",
           "time_ratio"]

MODES = ("plaintext", "ckks", "packed", "nvflare", "secagg")
LABELS = {
    "plaintext": "plaintext FedAvg (float64 arrays)",
    "ckks": "Fenji CKKS, one slot per value (N=8192, moduli [60, 60], scale 2^40)",
    "packed": "Fenji packed (BFV, two values per slot, federation.packing)",
    "nvflare": "NVFlare's TenSEAL parameters (N=8192, moduli [60, 40, 40], scale 2^40) inside Fenji's CKKS "
               "protocol; NVFlare's own message format: bench.coordinator_memory / bench.nvflare_aggregator",
    "secagg": "Flower's SecAgg+ workflow (bench.secagg_sites)",
}
SECAGG_MODULE = "bench.secagg_sites"


NVFLARE_PARAMS = {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 40, 40], "scale_bits": 40}


def run_point(mode: str, sites: int, rounds: int, rows: int) -> dict:
    """One point, in this process: the clinics, then one whole run in ``mode`` (not ``secagg``) on Flower's
    engine, measured from a reset peak. Returns the point's record (see ``point``)."""
    from federation.crypto import CKKSParams
    from keyholder.state import KeyHolderState
    from simulation.engine import run_simulated_federation

    if mode not in MODES or mode == "secagg":
        raise BenchUnavailable(f"bench.scale runs {', '.join(m for m in MODES if m != 'secagg')} itself, "
                               f"not {mode!r}")
    spec = clinical_spec()
    with tempfile.TemporaryDirectory(prefix=f"fenji-scale-{mode}-") as tmp:
        site_dirs = prepare_sites(Path(tmp), sites, rows, spec=spec)
        home = Path(tmp) / "keyholder"
        if mode == "nvflare":
            # run_key_holder's own init() never overwrites a key holder folder: made here first, its
            # CKKS context is the one the sites encrypt under for the whole run.
            KeyHolderState(home).init(CKKSParams(**{**NVFLARE_PARAMS, "coeff_mod_bit_sizes": tuple(
                NVFLARE_PARAMS["coeff_mod_bit_sizes"])}))
        reset_peak()
        baseline_mb = current_rss_mb()
        started = time.perf_counter()
        outcome = run_simulated_federation(spec, site_dirs, rounds=rounds, encrypt=mode != "plaintext",
                                           packed=mode == "packed", keyholder_home=home)
        total = time.perf_counter() - started
        peak_mb = peak_kb() / 1024
    n_params = int(outcome.flat.size)
    update_bytes = float(np.median([r["update-bytes"] for r in outcome.rounds]))
    later = outcome.rounds[1:]  # round 1 includes Ray's start-up and the statistics phase
    aggregate = [r["aggregate-seconds"] for r in outcome.rounds if "aggregate-seconds" in r]
    # A clinic whose AUROC is undefined (NaN, e.g. a held-out split of one class; seen at 300 sites) is left out.
    aurocs = [m["auroc"] for m in outcome.sites.values() if np.isfinite(m.get("auroc", np.nan))]
    return {
        "mode": mode, "sites": sites, "rounds": rounds, "rows_per_site": rows, "parameters": n_params,
        "total_seconds": total,
        "round_seconds": spread([r["round-seconds"] for r in later]) if later else None,
        "aggregate_seconds": spread(aggregate) if aggregate else None,
        "update_bytes_per_site": update_bytes, "float32_bytes": 4 * (n_params + 1),
        "bytes_ratio_float32": update_bytes / (4 * (n_params + 1)),
        "coordinator_baseline_mb": baseline_mb, "coordinator_peak_mb": peak_mb,
        "mean_auroc": float(np.mean(aurocs)) if aurocs else None,
    }


def _command(mode: str, sites: int, rounds: int, rows: int) -> list[str]:
    """The fresh process that measures one point: this module, or for ``secagg`` ``bench.secagg_sites``."""
    if mode not in MODES:
        raise BenchUnavailable(f"unknown scale mode {mode!r}; modes: {', '.join(MODES)}")
    args = [str(sites), str(rounds), str(rows)]
    if mode != "secagg":
        return [sys.executable, "-m", "bench.scale", mode, *args]
    if importlib.util.find_spec(SECAGG_MODULE) is None:
        raise BenchUnavailable(f"the secagg mode needs {SECAGG_MODULE} (Flower's SecAgg+ on the clinics), "
                               "which is not installed here; leave secagg out of --modes")
    return [sys.executable, "-m", SECAGG_MODULE, *args]


def point(mode: str, sites: int, rounds: int, rows: int) -> dict:
    """One point measured in a fresh process, with its wall time there (``point_wall_seconds``, process
    start-up and clinic preparation included) and its mode's label."""
    command = _command(mode, sites, rounds, rows)
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"scale point {mode} at {sites} sites failed ({' '.join(command[1:])}):\n"
                           f"{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"scale point {mode} at {sites} sites printed nothing:\n{proc.stderr[-3000:]}")
    record = json.loads(lines[-1])
    return {**record, "label": LABELS[mode], "point_wall_seconds": time.perf_counter() - started}


def run(*, sites: Sequence[int] = (10, 100, 300), modes: Sequence[str] = MODES, rounds: int = 3, rows: int = 120,
        on_point: Callable[[dict], None] | None = None) -> dict:
    """Every (sites, mode) point, each in a fresh process; ``on_point(point)`` after each."""
    for mode in modes:
        _command(mode, 1, 1, 1)  # an unknown mode or a missing module fails now, not after an hour
    load_before = os.getloadavg()
    points = []
    for n in sites:
        for mode in modes:
            points.append(point(mode, n, rounds, rows))
            if on_point:
                on_point(points[-1])
    return {
        "benchmark": "scale",
        "inputs": {"sites": list(sites), "modes": list(modes), "rounds": rounds, "rows_per_site": rows,
                   "hidden": HIDDEN, "nvflare_params": NVFLARE_PARAMS, "labels": {m: LABELS[m] for m in modes}},
        "environment": environment(),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "points": points,
        "goals": {"bytes_ratio_max": 2.0, "round_time_ratio_max": 1.1, "coordinator_memory": "flat as sites grow"},
    }


def plot(report: dict, path: Path) -> None:
    """Against sites (log x), one line per mode: median round seconds, bytes per site over float32, and the
    coordinator's peak MB (its baseline as x)."""
    fig, (time_ax, bytes_ax, memory_ax) = subplots(1, 3, figsize=(15, 4.5))
    for mode in report["inputs"]["modes"]:
        rows = sorted((p for p in report["points"] if p["mode"] == mode), key=lambda p: p["sites"])
        x = [p["sites"] for p in rows]
        timed = [p for p in rows if p["round_seconds"]]
        time_ax.plot([p["sites"] for p in timed], [p["round_seconds"]["median"] for p in timed], "o-", label=mode)
        bytes_ax.plot(x, [p["bytes_ratio_float32"] for p in rows], "o-", label=mode)
        line, = memory_ax.plot(x, [p["coordinator_peak_mb"] for p in rows], "o-", label=f"{mode} peak")
        memory_ax.plot(x, [p["coordinator_baseline_mb"] for p in rows], "x:", color=line.get_color(), lw=1)
    bytes_ax.axhline(report["goals"]["bytes_ratio_max"], color="k", ls=":", lw=1,
                     label=f"goal ≤ {report['goals']['bytes_ratio_max']}×")
    for ax, ylabel, title in (
            (time_ax, "seconds", "round wall time (median, rounds 2..)"),
            (bytes_ax, "× float32 update", "update bytes per site / float32 update"),
            (memory_ax, "MB", "coordinator process peak RSS (x: baseline)")):
        ax.set_xscale("log")
        ax.set_xticks(report["inputs"]["sites"], [str(n) for n in report["inputs"]["sites"]])
        ax.minorticks_off()
        ax.set_xlabel("sites")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    bytes_ax.set_yscale("log")
    params = report["points"][0]["parameters"] if report["points"] else 0
    fig.suptitle(f"Flower simulation engine, referral risk, ~{params:,} parameters, "
                 f"{report['inputs']['rounds']} rounds, {report['inputs']['rows_per_site']} rows per site")
    save_figure(fig, path)


if __name__ == "__main__":
    from federation.settings import configure_environment

    configure_environment()
    if len(sys.argv) != 5:
        sys.exit("usage: python -m bench.scale <mode> <sites> <rounds> <rows>")
    print(json.dumps(run_point(sys.argv[1], *(int(a) for a in sys.argv[2:5]))))


def time_ratio(report: dict, point: dict) -> float | None:
    """A point's median round over its baseline's: Fenji's modes over the plaintext run at the same number of
    sites (Fenji's rounds train, aggregate and evaluate); SecAgg+ over Flower's plain fit round in its own run
    (``bench.secagg_sites``: fit rounds only, so its seconds are not comparable with Fenji's)."""
    if point["mode"] == "secagg":
        return point.get("round_time_ratio_plain")
    plain = next((p for p in report["points"] if p["mode"] == "plaintext" and p["sites"] == point["sites"]), None)
    if plain is None or not point["round_seconds"] or not plain["round_seconds"]:
        return None
    return point["round_seconds"]["median"] / plain["round_seconds"]["median"]


def draw_time_ratios(ax, report: dict) -> None:
    """Grouped bars: each mode's round time over its baseline (``time_ratio``) at each number of sites."""
    sites = report["inputs"]["sites"]
    modes = [m for m in report["inputs"]["modes"] if m != "plaintext"]
    width = 0.8 / max(len(modes), 1)
    for i, mode in enumerate(modes):
        ratios = [next((time_ratio(report, p) for p in report["points"] if p["mode"] == mode and p["sites"] == n),
                       None) for n in sites]
        ax.bar([j + i * width for j in range(len(sites))], [r or 0 for r in ratios], width, label=mode)
    ax.axhline(1.1, color="tab:blue", ls=":", lw=1, label="goal: time ≤ 1.1×")
    ax.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(sites))], [f"{n} sites" for n in sites])
    ax.set_ylabel("median round / baseline round")
    ax.set_title("Flower's engine, clinics (secagg: over Flower's plain fit round)", fontsize=9)
    ax.legend(fontsize=7)

