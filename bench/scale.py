"""Scale: 10, 50 and 100 simulated sites, the same ~100k-parameter model, encrypted FedAvg.

Each configuration runs in a fresh process (so its peak memory is its own) on Flower's
simulation engine; the coordinator's process holds the ServerApp and the aggregator (the key
holder and the ClientApps run in other processes). Reported: round wall time, the aggregator's
time to add the ciphertexts, and the coordinator process's peak resident memory.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.clinics import HIDDEN, clinical_spec, prepare_sites
from bench.common import environment, save_figure, spread, subplots

__all__ = ["run", "run_one"]


def run_one(sites: int, rounds: int, rows: int) -> dict:
    from simulation.engine import run_simulated_federation

    spec = clinical_spec()
    with tempfile.TemporaryDirectory(prefix="fenji-scale-") as tmp:
        site_dirs = prepare_sites(Path(tmp), sites, rows, spec=spec)
        stamps = [time.perf_counter()]
        started = time.perf_counter()
        outcome = run_simulated_federation(spec, site_dirs, rounds=rounds, keyholder_home=Path(tmp) / "keyholder",
                                           on_round=lambda r, m: stamps.append(time.perf_counter()))
        total = time.perf_counter() - started
    round_seconds = [b - a for a, b in zip(stamps[1:], stamps[2:])]  # rounds 2.. (round 1 includes start-up)
    return {
        "sites": sites, "rounds": rounds, "rows_per_site": rows, "parameters": int(outcome.flat.size),
        "total_seconds": total,
        "round_seconds": spread(round_seconds) if round_seconds else None,
        "aggregate_seconds": spread([r["aggregate-seconds"] for r in outcome.rounds if "aggregate-seconds" in r]),
        "coordinator_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mean_auroc": float(sum(m["auroc"] for m in outcome.sites.values()) / len(outcome.sites)),
    }


def run(*, sites: list[int] = (10, 50, 100), rounds: int = 5, rows: int = 120, progress=None) -> dict:
    results = []
    for n in sites:
        proc = subprocess.run([sys.executable, "-m", "bench.scale", str(n), str(rounds), str(rows)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"scale run with {n} sites failed:\n{proc.stderr[-2000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        if progress:
            progress()
    return {
        "benchmark": "scale",
        "inputs": {"sites": list(sites), "rounds": rounds, "rows_per_site": rows, "hidden": HIDDEN,
                   "encrypted": True},
        "environment": environment(),
        "results": results,
        "goals": {"aggregation": "linear in sites", "100_sites_5_rounds_100k_params_seconds_max": 600},
    }


def plot(report: dict, path) -> None:
    rows = report["results"]
    x = [r["sites"] for r in rows]
    fig, ax = subplots(figsize=(6, 4))
    ax.plot(x, [r["round_seconds"]["median"] for r in rows], "o-", label="round wall time (s)")
    ax.plot(x, [r["aggregate_seconds"]["median"] for r in rows], "s-", label="aggregator: add ciphertexts (s)")
    ax.set_xlabel("sites")
    ax.set_ylabel("seconds per round (median)")
    ax2 = ax.twinx()
    ax2.plot(x, [r["coordinator_peak_rss_mb"] for r in rows], "^--", color="grey", label="coordinator peak RSS (MB)")
    ax2.set_ylabel("MB")
    fig.legend(fontsize=7, loc="upper left")
    ax.set_title(f"Encrypted FedAvg, ~{rows[0]['parameters']:,} parameters")
    save_figure(fig, path)


if __name__ == "__main__":
    from federation.settings import configure_environment

    configure_environment()
    n_sites, n_rounds, n_rows = (int(a) for a in sys.argv[1:4])
    print(json.dumps(run_one(n_sites, n_rounds, n_rows)))
