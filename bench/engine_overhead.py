"""Encryption overhead where it counts: whole federated runs on Flower's simulation engine, on the
demo's synthetic clinics, with each task's own local training, in three modes on the same sites and
seed: plaintext FedAvg, Fenji's CKKS (one slot per value) and Fenji packed (``federation.packing``).

Reported per mode: the median round wall time (rounds 2.. ; round 1 includes Ray's start-up), the
bytes of the update each site sent per round (plaintext: the float64 array Fenji sends; its float32
size is the anchor the goals use), and the held-out AUROC of the calibrated global model averaged
over the clinics, so that a change in the model is seen next to the cost.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.common import environment, save_figure, spread, subplots
from bench.errors import BenchUnavailable

__all__ = ["MODES", "plot", "run", "run_mode", "sites"]

MODES = ("plaintext", "ckks", "packed")
MLP_100K = [256, 256, 88]  # with the referral task's inputs: about 100k parameters (bench.scale)


def sites(root: Path, *specs, clinics=None, seed: int = 0) -> list[Path]:
    """The synthetic clinics (``simulation.synth``; the demo's eight unless ``clinics`` is given), each
    ingested for every task in ``specs`` into its own site store under ``root / "sites"``, as the demo does."""
    from node_agent.ingest import ingest_file
    from node_agent.mapping import load_mapping
    from node_agent.store import SiteStore
    from simulation.synth import write_federation

    site_dirs = []
    for name, path, mapping in write_federation(root / "exports", clinics=clinics, seed=seed):
        with SiteStore(root / "sites" / name) as store:
            for spec in specs:
                ingest_file(store, spec, path, load_mapping(mapping))
        site_dirs.append(root / "sites" / name)
    return site_dirs


def _spec(task: str, model: str):
    from models.spec import load_task

    spec = load_task(task)
    if model == "mlp-100k":
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"family": "mlp", "hidden": MLP_100K})})
    return spec


def run_mode(spec, site_dirs: Sequence[Path], mode: str, rounds: int, home: Path, **options):
    """One whole run in ``mode`` (one of ``MODES``) on Flower's engine, with the key holder's folder
    under ``home``; ``options`` go to ``run_simulated_federation``. Returns (outcome, seconds)."""
    from simulation.engine import run_simulated_federation

    if mode not in MODES:
        raise BenchUnavailable(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    started = time.perf_counter()
    outcome = run_simulated_federation(spec, site_dirs, rounds=rounds, encrypt=mode != "plaintext",
                                       packed=mode == "packed", keyholder_home=home / f"keyholder-{mode}", **options)
    return outcome, time.perf_counter() - started


def _one(spec, site_dirs: Sequence[Path], mode: str, rounds: int, home: Path) -> dict:
    outcome, total = run_mode(spec, site_dirs, mode, rounds, home)
    later = outcome.rounds[1:] or outcome.rounds
    n_params = int(outcome.flat.size)
    update_bytes = float(np.median([r["update-bytes"] for r in outcome.rounds]))
    return {
        "mode": mode, "parameters": n_params, "rounds": rounds, "total_seconds": total,
        "round_seconds": spread([r["round-seconds"] for r in later]),
        "update_bytes_per_site": update_bytes, "float32_bytes": 4 * (n_params + 1),
        "bytes_ratio_float32": update_bytes / (4 * (n_params + 1)),
        "mean_auroc": float(np.mean([m["auroc"] for m in outcome.sites.values()])),
        "site_auroc": {site: float(m["auroc"]) for site, m in outcome.sites.items()},
    }


def run(*, task: str = "referral_risk", models: Sequence[str] = ("task", "mlp-100k"), rounds: int = 4,
        progress=None) -> dict:
    """Every model and mode on the same clinics; ``progress(point)`` after each run."""
    points = []
    with tempfile.TemporaryDirectory(prefix="fenji-engine-overhead-") as tmp:
        root = Path(tmp)
        for model in models:
            spec = _spec(task, model)
            site_dirs = sites(root / model, spec)
            for mode in MODES:
                point = {"model": model, **_one(spec, site_dirs, mode, rounds, root / model)}
                points.append(point)
                if progress:
                    progress(point)
    for point in points:
        plain = next(p for p in points if p["model"] == point["model"] and p["mode"] == "plaintext")
        point["round_time_ratio"] = point["round_seconds"]["median"] / plain["round_seconds"]["median"]
        point["auroc_change_vs_plaintext"] = point["mean_auroc"] - plain["mean_auroc"]
    return {"benchmark": "engine-overhead", "task": task, "rounds": rounds, "environment": environment(),
            "points": points, "goals": {"bytes_ratio_max": 2.0, "round_time_ratio_max": 1.1}}


def plot(report: dict, path: Path) -> None:
    models = sorted({p["model"] for p in report["points"]}, key=[p["model"] for p in report["points"]].index)
    fig, (time_ax, bytes_ax) = subplots(1, 2, figsize=(10, 4))
    width = 0.25
    for i, mode in enumerate(MODES):
        rows = [next(p for p in report["points"] if p["model"] == m and p["mode"] == mode) for m in models]
        x = np.arange(len(models)) + (i - 1) * width
        time_ax.bar(x, [r["round_time_ratio"] for r in rows], width, label=mode)
        bytes_ax.bar(x, [r["bytes_ratio_float32"] for r in rows], width, label=mode)
    for ax, goal, title in ((time_ax, 1.1, "round wall time / plaintext round"),
                            (bytes_ax, 2.0, "update bytes per site / float32 update")):
        ax.axhline(goal, color="k", ls=":", lw=1, label=f"goal ≤ {goal}×")
        ax.set_xticks(np.arange(len(models)), [f"{m}\n({next(p['parameters'] for p in report['points'] if p['model'] == m):,} params)"
                                               for m in models])
        ax.set_title(title)
        ax.legend(fontsize=7)
    bytes_ax.set_yscale("log")
    fig.suptitle(f"Flower simulation engine, {report['task']}, demo clinics, {report['rounds']} rounds")
    save_figure(fig, path)
