"""What site-side DP-SGD costs the clinics' models, per task, on the demo's synthetic clinics.

The demo's clinics (``simulation/synth.py`` through each clinic's own ingest, as ``fenji demo``
builds them), each task trained as the federation trains it, with each site's training settings
from ``node_agent.admission.site_train_config`` (so a site's DP policy sets the noise, the clipping
norm and the DP training choices of ``models.training`` exactly as in a run):

- global: FedAvg in this process, ``rounds`` rounds, weighted by the sites' rows, on the encoding of
  the summed site statistics, then the federated calibration (the sums are those the encrypted
  federation computes to within 1e-6; the encryption is left out to keep this fast);
- personalised: each site's own adaptation of the global model (``node_agent.local.personalise``);
- local-only: each site's model on its own rows alone, the same epochs as the run (no DP: it never
  leaves the site).

Figures are means over clinics of the held-out AUROC (macro for several classes), without DP and
at each epsilon per run. The DP noise is seeded by the sites' demo-only ``noise_seed``, so the
benchmark repeats exactly.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord

from bench.common import environment, save_figure, subplots
from models.calibration import fit_calibration
from models.encoding import SiteStatistics
from models.nets import build_model, get_flat
from models.spec import TaskSpec, load_task
from models.training import evaluate
from node_agent.admission import Admitted, site_train_config
from node_agent.local import (
    SiteData,
    calibration_update,
    evaluate_flat,
    load_site_data,
    local_only_metrics,
    personalise,
    site_statistics,
    train_update,
)
from node_agent.policy import DPPolicy, SitePolicy

__all__ = ["EPSILONS", "TASKS", "build_clinics", "federate", "plot", "run"]

TASKS = ("triage", "diagnosis", "referral_risk", "triage_text", "diagnosis_text", "referral_risk_text")
EPSILONS = (0.0, 1.5, 3.0)
DELTA = 1e-4
MODELS = ("local_only", "global", "personalised")


def build_clinics(workdir: Path, tasks: Sequence[str], *, seed: int = 0) -> list[Path]:
    """The demo's clinics, each export ingested into its own site store under ``workdir``."""
    from node_agent.ingest import ingest_file
    from node_agent.mapping import load_mapping
    from node_agent.store import SiteStore
    from simulation.synth import write_federation

    specs = [load_task(t) for t in tasks]
    site_dirs = []
    for name, path, mapping in write_federation(workdir / "exports", seed=seed):
        with SiteStore(workdir / "sites" / name) as store:
            for spec in specs:
                ingest_file(store, spec, path, load_mapping(mapping))
        site_dirs.append(workdir / "sites" / name)
    return site_dirs


def _admitted(site_dir: Path, spec: TaskSpec, dp: DPPolicy, *, rounds: int, server_round: int,
              run_id: str) -> Admitted:
    """What ``admit`` hands the train handler: the job's config and this site's policy."""
    config = ConfigRecord({"run-id": run_id, "server-round": server_round, "num-rounds": rounds, "seed": 0})
    return Admitted(site_dir, spec, config, SitePolicy(dp=dp), digest="", rounds=rounds)


def federate(spec: TaskSpec, site_dirs: Sequence[Path], dp: DPPolicy, *, rounds: int,
             run_id: str = "bench") -> dict[str, dict[str, float]]:
    """One run of ``spec``: ``site -> model -> held-out metrics`` (models: ``MODELS``)."""
    data: dict[str, SiteData] = {d.name: load_site_data(d, spec) for d in site_dirs}
    dirs = {d.name: d for d in site_dirs}
    summed = np.sum([site_statistics(d).vector for d in data.values()], axis=0)
    params = SiteStatistics(spec, summed).encoding_params()
    width = data[next(iter(data))].encoded(params)[0].shape[1]
    flat = get_flat(build_model(spec, width, seed=0))
    for server_round in range(1, rounds + 1):
        updates, weights = [], []
        for name, site in data.items():
            config = site_train_config(_admitted(dirs[name], spec, dp, rounds=rounds, server_round=server_round,
                                                 run_id=run_id), len(site.train_frame))
            update, n, _ = train_update(site, params, flat, config)
            updates.append(update)
            weights.append(n)
        flat = np.average(np.stack(updates), axis=0, weights=np.asarray(weights, float))
    calibration = fit_calibration(spec, np.sum([calibration_update(d, params, flat) for d in data.values()], axis=0))
    out = {}
    for name, site in data.items():
        admitted = _admitted(dirs[name], spec, dp, rounds=rounds, server_round=rounds, run_id=run_id)
        personal = personalise(site, params, flat, calibration, site_train_config(admitted))
        _, _, x_test, y_test = site.encoded(params)
        local_config = site_train_config(admitted)
        local_config.epochs = spec.model.local_epochs * rounds  # as the final evaluation's local-only-epochs
        out[name] = {
            "global": evaluate_flat(site, params, flat, calibration),
            "personalised": evaluate(personal.model, spec, x_test, y_test, personal.calibration),
            "local_only": local_only_metrics(site, local_config),
        }
    return out


def _means(per_site: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    return {m: float(np.nanmean([s[m]["auroc"] for s in per_site.values()])) for m in MODELS}


def run(*, tasks: Sequence[str] = TASKS, epsilons: Sequence[float] = EPSILONS, rounds: int = 15, data_seed: int = 0,
        noise_seed: int = 0, workdir: Path | None = None,
        progress: Callable[[str, float, dict[str, float]], None] | None = None) -> dict:
    """Mean held-out AUROC of the three models per task and epsilon; the benchmark's JSON report."""
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small logistic models: one thread is faster than two fighting over two cores
    try:
        with tempfile.TemporaryDirectory(prefix="fenji-dp-utility-") as tmp:
            root = Path(workdir or tmp)
            # A workdir with clinics already ingested (by an earlier run with the same tasks and seed) is reused.
            site_dirs = (sorted((root / "sites").iterdir()) if (root / "sites").is_dir()
                         else build_clinics(root, tasks, seed=data_seed))
            results: dict[str, dict[str, dict]] = {}
            for task in tasks:
                spec = load_task(task)
                results[task] = {}
                for epsilon in epsilons:
                    dp = DPPolicy(enabled=epsilon > 0, epsilon_per_run=epsilon or 1.0, delta=DELTA,
                                  noise_seed=noise_seed)
                    t0 = time.perf_counter()
                    per_site = federate(spec, site_dirs, dp, rounds=rounds)
                    means = _means(per_site)
                    results[task][f"{epsilon:g}"] = {
                        "means": means, "seconds": time.perf_counter() - t0,
                        "per_clinic": {s: {m: v[m]["auroc"] for m in MODELS} for s, v in per_site.items()},
                    }
                    if progress:
                        progress(task, epsilon, means)
    finally:
        torch.set_num_threads(threads)
    return {
        "benchmark": "dp-utility",
        "inputs": {"tasks": list(tasks), "epsilons_per_run": list(epsilons), "delta": DELTA, "rounds": rounds,
                   "data_seed": data_seed, "noise_seed": noise_seed, "dp_defaults": DPPolicy().model_dump()},
        "environment": environment(),
        "seconds": time.perf_counter() - started,
        "results": results,
    }


def plot(report: dict, path: Path) -> None:
    """Per task, mean held-out AUROC of local-only, global and personalised against epsilon (0: no DP)."""
    tasks = list(report["results"])
    fig, axes = subplots(1, len(tasks), figsize=(3.0 * len(tasks), 3.2), sharey=False, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = report["results"][task]
        labels = list(rows)
        for model, marker in zip(MODELS, "sox"):
            ax.plot(range(len(labels)), [rows[e]["means"][model] for e in labels], marker=marker, label=model)
        ax.set_xticks(range(len(labels)), ["no DP" if e == "0" else f"ε {e}" for e in labels])
        ax.set_title(task, fontsize=9)
    axes[0][0].set_ylabel("mean held-out AUROC")
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    import argparse

    from bench.common import write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--epsilons", default=",".join(f"{e:g}" for e in EPSILONS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("bench/results/dp-utility.json"))
    args = parser.parse_args()
    report = run(tasks=args.tasks.split(","), epsilons=[float(e) for e in args.epsilons.split(",")],
                 rounds=args.rounds, progress=lambda t, e, m: print(t, e, {k: round(v, 3) for k, v in m.items()},
                                                                    flush=True))
    write_json(args.out, report)
    plot(report, args.out.with_suffix(".png"))
