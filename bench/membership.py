"""Membership inference on a released model, with and without DP-SGD: what ε buys.

The attack is Yeom et al.'s loss threshold (CSF 2018): a record whose loss under the released model
is low was probably trained on. Its AUROC over members (the training rows) against non-members
(held-out rows of the same data, as many) measures how much the model gives its training rows
away: 0.5 is chance. Each setting trains the model centrally on the members, as a site trains on its
own rows (``models.training.train`` with the task's settings, for the epochs the demo's 15 rounds of 5
local epochs add up to), without DP and with DP-SGD at each ε; each seed draws a new member set, a
new initialisation and new batches.

Next to each attack AUROC: the model's own held-out accuracy and AUROC (on the non-members), and
the highest AUROC that *any* attack can reach against an (ε, δ)-DP training run (the hypothesis-
testing bound of Kairouz et al. 2015), so the measured leak and the guarantee can be read together.

A shadow-model attack (Shokri et al. 2017) is not run: for a binary label its attack model sees a
record's predicted probability and its true label, i.e. its loss, so its ROC is the loss
threshold's; shadow models only pick the threshold. The threshold attack reported here picks it as
Yeom et al. do, at the mean training loss (which a site reports as ``train-loss``).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from bench.common import environment, save_figure, spread, subplots
from models.encoding import Encoder, SiteStatistics, encode_labels
from models.errors import FenjiError
from models.nets import build_model
from models.spec import TaskSpec, load_task
from models.training import TrainConfig, dp_noise_multiplier, evaluate, predict_proba, train

__all__ = ["ATTACK", "EPSILONS", "attack_metrics", "dp_auroc_bound", "load_clinic", "load_heart", "plot", "run",
           "run_setting", "with_family"]

EPSILONS = (8.0, 1.0)
DELTA = 1e-3
EPOCHS = 75  # the demo's 15 rounds × the tasks' 5 local epochs
MLP_HIDDEN = [64, 64]
ATTACK = {
    "name": "loss threshold (Yeom et al. 2018)",
    "score": "minus the record's cross-entropy under the released model",
    "assumes": [
        "the attacker can query the released model's class probabilities (or holds its parameters)",
        "the attacker holds the candidate record's features and its true label",
        "members and non-members are drawn from the same rows, as many of each (a 50 % prior)",
        "AUROC is over every threshold, i.e. the best an attacker who could calibrate one would do; "
        "the threshold attack uses the mean training loss, as a site's reported train-loss gives it",
    ],
    "not_assumed": "no shadow models, no access to other training rows, no auxiliary data",
}


def with_family(spec: TaskSpec, family: str) -> TaskSpec:
    """The task with its model family replaced (an MLP can memorise what a linear model cannot)."""
    if family == spec.model.family:
        return spec
    model = spec.model.model_copy(update={"family": family, "hidden": MLP_HIDDEN})
    return spec.model_copy(update={"model": model})


def _losses(model: torch.nn.Module, spec: TaskSpec, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    proba = predict_proba(model, spec, x)
    return -np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0))


def attack_metrics(member_loss: np.ndarray, nonmember_loss: np.ndarray) -> dict[str, float]:
    """The loss-threshold attack's AUROC, and its TPR, FPR and advantage at the mean member loss."""
    scores = np.concatenate([-member_loss, -nonmember_loss])
    truth = np.concatenate([np.ones(len(member_loss)), np.zeros(len(nonmember_loss))])
    threshold = float(member_loss.mean())
    tpr, fpr = float((member_loss <= threshold).mean()), float((nonmember_loss <= threshold).mean())
    return {"auroc": float(roc_auc_score(truth, scores)), "tpr": tpr, "fpr": fpr, "advantage": tpr - fpr,
            "member_loss": float(member_loss.mean()), "nonmember_loss": float(nonmember_loss.mean())}


def dp_auroc_bound(epsilon: float, delta: float, grid: int = 100_001) -> float:
    """The largest AUROC any membership test can reach against an (ε, δ)-DP mechanism.

    Every test's power is at most ``min(1, e^ε·α + δ, 1 − e^−ε·(1 − δ − α))`` at false-positive rate α
    (Kairouz, Oh and Viswanath 2015); the bound is the area under that curve.
    """
    alpha = np.linspace(0.0, 1.0, grid)
    power = np.minimum.reduce([np.ones_like(alpha), math.exp(epsilon) * alpha + delta,
                               1 - math.exp(-epsilon) * (1 - delta - alpha)])
    return float(np.trapezoid(np.clip(power, 0, 1), alpha))


def run_setting(spec: TaskSpec, members: pd.DataFrame, nonmembers: pd.DataFrame, *, epochs: int, seed: int,
                epsilon: float | None, delta: float = DELTA) -> dict:
    """Train on ``members`` (DP-SGD at ``epsilon`` unless None), evaluate on ``nonmembers``, attack both.

    Returns the model's held-out metrics and the attack's, or ``{"unsupported": reason}`` when DP-SGD
    does not support the model (e.g. an ordinal task's cut points).
    """
    encoder = Encoder(spec, SiteStatistics.from_frame(spec, members).encoding_params())
    x_in, y_in = encoder.transform(members), encode_labels(spec, members)
    x_out, y_out = encoder.transform(nonmembers), encode_labels(spec, nonmembers)
    config = TrainConfig.from_spec(spec, seed=seed, epochs=epochs)
    if epsilon is not None:
        config.dp_noise_multiplier = dp_noise_multiplier(epsilon=epsilon, delta=delta, n=len(x_in),
                                                         batch_size=config.batch_size, epochs=epochs)
    model = build_model(spec, x_in.shape[1], seed=seed)
    try:
        train(model, spec, x_in, y_in, config)
    except FenjiError as exc:  # a typed refusal (DP-SGD has no per-sample gradients for this model)
        if epsilon is None:
            raise
        return {"unsupported": str(exc)}
    held_out = evaluate(model, spec, x_out, y_out)
    return {"accuracy": held_out["accuracy"], "auroc": held_out["auroc"],
            "train_accuracy": evaluate(model, spec, x_in, y_in)["accuracy"],
            "noise_multiplier": config.dp_noise_multiplier,
            "attack": attack_metrics(_losses(model, spec, x_in, y_in), _losses(model, spec, x_out, y_out))}


def load_heart(data_dir: Path, workdir: Path) -> tuple[TaskSpec, pd.DataFrame]:
    """The four hospitals' 740 complete rows (FLamby's, through Fenji's ingest), pooled."""
    from bench.heart import HOSPITALS, prepare_sites
    from node_agent.local import load_site_data

    spec = load_task("heart_disease")
    prepare_sites(data_dir, workdir)
    frames = []
    for hospital in HOSPITALS:
        data = load_site_data(workdir / hospital, spec)
        frames += [data.train_frame, data.test_frame]
    return spec, pd.concat(frames, ignore_index=True)


def load_clinic(workdir: Path, task: str, clinic: str, *, clinics: Sequence | None = None) -> tuple[TaskSpec, pd.DataFrame]:
    """One synthetic clinic's accepted rows of ``task``, through the clinic's export and Fenji's ingest."""
    from node_agent.ingest import ingest_file
    from node_agent.mapping import load_mapping
    from node_agent.store import SiteStore
    from simulation.synth import write_federation

    spec = load_task(task)
    exports = {name: (path, mapping) for name, path, mapping in write_federation(workdir / "exports", clinics=clinics)}
    path, mapping = exports[clinic]
    with SiteStore(workdir / task / clinic) as store:
        ingest_file(store, spec, path, load_mapping(mapping))
        return spec, store.load(spec)


def _split(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Members and non-members: two disjoint halves of the rows, drawn anew for each seed."""
    order = np.random.default_rng(seed).permutation(len(frame))
    half = len(frame) // 2
    return frame.iloc[order[:half]], frame.iloc[order[half : 2 * half]]


def _summary(runs: list[dict]) -> dict:
    if any("unsupported" in r for r in runs):
        return {"unsupported": runs[0].get("unsupported", "")}
    out = {key: spread([r[key] for r in runs]) for key in ("accuracy", "auroc", "train_accuracy")}
    out["attack_auroc"] = spread([r["attack"]["auroc"] for r in runs])
    out["attack_advantage"] = spread([r["attack"]["advantage"] for r in runs])
    out["noise_multiplier"] = runs[0]["noise_multiplier"]
    out["per_seed"] = runs
    return out


def run(*, datasets: dict[str, Callable[[Path], tuple[TaskSpec, pd.DataFrame]]], seeds: int = 5,
        epochs: int = EPOCHS, epsilons: Sequence[float] = EPSILONS, delta: float = DELTA,
        families: Sequence[str] = ("logistic", "mlp"), unavailable: dict[str, str] | None = None,
        progress: Callable[[], None] | None = None) -> dict:
    """Every data set × model family × privacy level × seed; ``datasets`` maps a name to a loader
    that builds the data under a temporary folder."""
    results = []
    rows = {}
    with tempfile.TemporaryDirectory(prefix="fenji-membership-") as tmp:
        for name, loader in datasets.items():
            base, frame = loader(Path(tmp) / name)
            rows[name] = {"task": base.name, "rows": len(frame), "members": len(frame) // 2,
                          "nonmembers": len(frame) // 2}
            for family in families:
                spec = with_family(base, family)
                for epsilon in [None, *epsilons]:
                    runs = []
                    for seed in range(seeds):
                        members, nonmembers = _split(frame, seed)
                        runs.append(run_setting(spec, members, nonmembers, epochs=epochs, seed=seed,
                                                epsilon=epsilon, delta=delta))
                        if progress:
                            progress()
                    bound = 1.0 if epsilon is None else dp_auroc_bound(epsilon, delta)
                    results.append({"dataset": name, "task": base.name, "family": family, "epsilon": epsilon,
                                    "delta": None if epsilon is None else delta,
                                    "attack_auroc_bound": bound, **_summary(runs)})
    return {
        "benchmark": "membership",
        "inputs": {"seeds": seeds, "epochs": epochs, "epsilons": list(epsilons), "delta": delta,
                   "families": {f: ("the task's model" if f == "logistic" else f"MLP, hidden {MLP_HIDDEN}")
                                for f in families},
                   "training": "centrally on the members, models.training.train with the task's learning rate, "
                               "batch size and weight decay; DP-SGD (Opacus, Poisson sampling, clipping norm 1, "
                               "RDP accountant) spends (ε, δ) over the whole run",
                   "split": "each seed: a random half of the rows are members, the other half non-members",
                   "data": rows, "unavailable": unavailable or {}},
        "attack": ATTACK,
        "environment": environment(),
        "results": results,
    }


def plot(report: dict, path) -> None:
    """Attack AUROC against model AUROC, one marker per setting (median, whiskers min–max over seeds)."""
    fig, ax = subplots(figsize=(7, 4.5))
    colours = {None: "tab:red", 8.0: "tab:orange", 1.0: "tab:green"}
    markers = {"logistic": "o", "mlp": "s"}
    shapes = {"heart": "", "clinic": ""}
    for r in report["results"]:
        if "unsupported" in r:
            continue
        x, y = r["auroc"], r["attack_auroc"]
        colour = colours.get(r["epsilon"], "tab:blue")
        ax.errorbar(x["median"], y["median"], xerr=[[x["median"] - x["min"]], [x["max"] - x["median"]]],
                    yerr=[[y["median"] - y["min"]], [y["max"] - y["median"]]], fmt=markers.get(r["family"], "^"),
                    color=colour, ms=7, capsize=2, lw=1, mfc=colour if r["dataset"].startswith("heart") else "white")
        ax.annotate(r["dataset"].split("_")[0], (x["median"], y["median"]), fontsize=6, xytext=(4, 3),
                    textcoords="offset points")
    del shapes
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.text(ax.get_xlim()[0], 0.5, " chance", va="bottom", fontsize=7, color="grey")
    handles = [ax.scatter([], [], color=c, label="no DP" if e is None else f"DP ε = {e:g}") for e, c in colours.items()]
    handles += [ax.scatter([], [], marker=m, color="black", mfc="white", label=f) for f, m in markers.items()]
    ax.legend(handles=handles, fontsize=7, title="filled: heart; open: clinic", title_fontsize=7)
    ax.set_xlabel("model AUROC on held-out rows (median, min–max over seeds)")
    ax.set_ylabel("membership attack AUROC")
    ax.set_title("Loss-threshold membership inference: what ε buys")
    save_figure(fig, path)
