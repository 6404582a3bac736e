"""What the free-text chief complaint adds, per task, on the synthetic clinics.

Each clinical task (``triage``, ``diagnosis``, ``referral_risk``) against its ``*_text`` variant
(the same task plus the hashed complaint text, ``models/text.py``), on the default synthetic
clinics (``simulation/synth.py``, seed 0), the same rows for both. Two ways of training:

- pooled: all clinics' training rows in one place (the reference only a simulation can compute);
- federated: FedAvg in this process, ``rounds`` rounds of the task's local epochs at each clinic,
  on encoding parameters from the summed site statistics, as the federation computes them (the
  encryption changes the sums by less than 1e-6, so it is left out here to keep this fast).

Test rows are a stable quarter of each clinic (a hash of the record id), scored per clinic; the
figures are means over clinics of each task's headline metrics, and of ``seeds`` model seeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.common import environment, save_figure, subplots
from models.encoding import Encoder, SiteStatistics, encode_labels
from models.nets import build_model, get_flat, set_flat
from models.spec import TaskSpec, load_task
from models.training import TrainConfig, evaluate, train
from simulation.report import headline_metrics
from simulation.synth import DEFAULT_CLINICS, generate_clinic

__all__ = ["TASKS", "clinic_frames", "compare", "plot", "run"]

TASKS = ("triage", "diagnosis", "referral_risk")
TEST_FRACTION = 0.25


def clinic_frames(seed: int = 0) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """``clinic -> (train, test)`` of the default synthetic clinics, as their exports hold them."""
    rng = np.random.default_rng(seed)
    out = {}
    for profile in DEFAULT_CLINICS:
        frame = generate_clinic(profile, rng, text_seed=seed).drop(columns=profile.never_records, errors="ignore")
        keys = pd.util.hash_pandas_object(frame["encounter_id"], index=False).to_numpy()
        test = (keys % 10_000) < int(TEST_FRACTION * 10_000)
        out[profile.name] = (frame[~test].reset_index(drop=True), frame[test].reset_index(drop=True))
    return out


def _encoded(spec: TaskSpec, frames: dict) -> dict[str, tuple[np.ndarray, ...]]:
    """``clinic -> (x_train, y_train, x_test, y_test)`` on the federated encoding (the sum of the
    clinics' statistics, which pooled training would compute the same)."""
    stats = [SiteStatistics.from_frame(spec, train_frame) for train_frame, _ in frames.values()]
    encoder = Encoder(spec, SiteStatistics(spec, np.sum([s.vector for s in stats], axis=0)).encoding_params())
    return {site: (encoder.transform(tr), encode_labels(spec, tr), encoder.transform(te), encode_labels(spec, te))
            for site, (tr, te) in frames.items()}


def _metrics(spec: TaskSpec, model, data: dict) -> dict[str, dict[str, float]]:
    return {site: evaluate(model, spec, x_test, y_test) for site, (_, _, x_test, y_test) in data.items()}


def _pooled(spec: TaskSpec, data: dict, config: TrainConfig, epochs: int) -> dict[str, dict[str, float]]:
    x = np.concatenate([d[0] for d in data.values()])
    y = np.concatenate([d[1] for d in data.values()])
    model = build_model(spec, x.shape[1])
    train(model, spec, x, y, TrainConfig(**{**config.__dict__, "epochs": epochs}))
    return _metrics(spec, model, data)


def _federated(spec: TaskSpec, data: dict, config: TrainConfig, rounds: int) -> dict[str, dict[str, float]]:
    width = next(iter(data.values()))[0].shape[1]
    model = build_model(spec, width)
    flat = get_flat(model)
    for _ in range(rounds):
        updates, weights = [], []
        for x, y, _, _ in data.values():
            local = set_flat(build_model(spec, width), flat)
            train(local, spec, x, y, config)
            updates.append(get_flat(local))
            weights.append(len(x))
        flat = np.average(np.stack(updates), axis=0, weights=np.asarray(weights, float))
    return _metrics(spec, set_flat(model, flat), data)


def _means(spec: TaskSpec, per_site: dict[str, dict[str, float]]) -> dict[str, float]:
    return {m: float(np.nanmean([s.get(m, np.nan) for s in per_site.values()])) for m in headline_metrics(spec)}


def compare(task: str, frames: dict, *, mode: str, seeds: int, rounds: int, epochs: int) -> dict:
    """Mean headline metrics over clinics (and seeds) of ``task`` without and with the text."""
    out: dict = {}
    for variant, name in (("without", task), ("with", f"{task}_text")):
        spec = load_task(name)
        data = _encoded(spec, frames)
        runs = []
        for seed in range(seeds):
            config = TrainConfig.from_spec(spec, seed=seed)
            per_site = (_pooled(spec, data, config, epochs) if mode == "pooled"
                        else _federated(spec, data, config, rounds))
            runs.append(per_site)
        out[variant] = {
            "task": name,
            "means": {m: float(np.mean([_means(spec, r)[m] for r in runs])) for m in headline_metrics(spec)},
            "per_clinic": {site: {m: float(np.mean([r[site][m] for r in runs])) for m in headline_metrics(spec)}
                           for site in frames},
        }
    out["gain"] = {m: out["with"]["means"][m] - out["without"]["means"][m] for m in out["without"]["means"]}
    return out


def run(*, seeds: int = 1, rounds: int = 8, epochs: int = 20, data_seed: int = 0,
        tasks: tuple[str, ...] = TASKS, progress: Callable[[], None] | None = None) -> dict:
    """The comparison for every task, pooled and federated; the benchmark's JSON report."""
    started = time.perf_counter()
    # Small logistic models: one thread each is faster than two threads fighting over two cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(seeds=seeds, rounds=rounds, epochs=epochs, data_seed=data_seed, tasks=tasks, progress=progress,
                    started=started)
    finally:
        torch.set_num_threads(threads)


def _run(*, seeds: int, rounds: int, epochs: int, data_seed: int, tasks: tuple[str, ...],
         progress: Callable[[], None] | None, started: float) -> dict:
    frames = clinic_frames(data_seed)
    texts = pd.concat([tr for tr, _ in frames.values()])["complaint_text"]
    results: dict = {}
    for task in tasks:
        results[task] = {}
        for mode in ("pooled", "federated"):
            results[task][mode] = compare(task, frames, mode=mode, seeds=seeds, rounds=rounds, epochs=epochs)
            if progress:
                progress()
    return {
        "benchmark": "text-gain",
        "inputs": {"clinics": list(frames), "data_seed": data_seed, "seeds": seeds, "federated_rounds": rounds,
                   "pooled_epochs": epochs, "train_rows": int(sum(len(tr) for tr, _ in frames.values())),
                   "test_rows": int(sum(len(te) for _, te in frames.values())),
                   "empty_texts": float(texts.isna().mean())},
        "environment": environment(),
        "seconds": time.perf_counter() - started,
        "results": results,
    }


def plot(report: dict, path: Path) -> None:
    """One panel per task: each headline metric without and with the text, pooled and federated."""
    results = report["results"]
    fig, axes = subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, (task, modes) in zip(axes[0], results.items()):
        metrics = list(modes["pooled"]["without"]["means"])
        labels, without, with_text = [], [], []
        for mode in ("pooled", "federated"):
            for m in metrics:
                labels.append(f"{m}\n{mode}")
                without.append(modes[mode]["without"]["means"][m])
                with_text.append(modes[mode]["with"]["means"][m])
        pos = np.arange(len(labels))
        ax.bar(pos - 0.2, without, 0.4, label="without text")
        ax.bar(pos + 0.2, with_text, 0.4, label="with complaint text")
        ax.set_xticks(pos, labels, fontsize=7)
        ax.set_ylim(max(0.0, min(without + with_text) - 0.1), 1.0)
        ax.set_title(task)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Free-text chief complaint: gain per task (synthetic clinics, mean over clinics)", fontsize=9)
    save_figure(fig, path)
