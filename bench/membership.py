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
from bench.errors import BenchUnavailable
from models.encoding import Encoder, SiteStatistics, encode_labels
from models.errors import FenjiError
from models.nets import build_model
from models.spec import TaskSpec, load_task
from models.training import (
    TrainConfig,
    dp_noise_multiplier,
    evaluate,
    predict_proba,
    train,
)
from simulation.synth import DEFAULT_CLINICS, ClinicProfile

__all__ = ["ATTACK", "EPSILONS", "attack_metrics", "default_datasets", "dp_auroc_bound", "load_clinic", "load_heart",
           "plot", "run", "run_setting", "table", "with_family"]

EPSILONS = (8.0, 1.0)
DELTA = 1e-3
EPOCHS = 75  # the demo's 15 rounds × the tasks' 5 local epochs
MLP_HIDDEN = [64, 64]
FAMILIES = {"logistic": "logistic regression (the tasks' own model)",
            "mlp": f"MLP, hidden layers {MLP_HIDDEN} (a model that can memorise its rows)"}
ATTACK = {
    "name": "loss threshold (Yeom et al. 2018)",
    "score": "minus the record's cross-entropy under the released model",
    "assumes": [
        "the attacker can query the released model's class probabilities (or holds its parameters)",
        "the attacker holds the candidate record's features and its true label",
        "members and non-members are drawn from the same rows, as many of each (a 50 % prior)",
        ("AUROC is over every threshold, i.e. the best an attacker who could calibrate one would do; "
         "the threshold attack uses the mean training loss, as a site's reported train-loss gives it"),
    ],
    "not_assumed": "no shadow models, no access to other training rows, no auxiliary data",
    "scope": "the model is trained on the members alone, as one site's local model: a worst case for a federated "
             "model, where each site's update is averaged with the others'; the encoding's standardisation "
             "statistics are not attacked",
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
    refuses the model (a layer Opacus has no per-sample gradients for; ordinal models were refused before).
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
    # Fenji's typed refusal, or Opacus' own for a layer it has no per-sample gradients for.
    except (FenjiError, NotImplementedError) as exc:
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

    if not (data_dir / "uci_heart_disease").is_dir():
        raise BenchUnavailable(f"UCI heart disease data not found under {data_dir} (set FENJI_DATA_DIR)")
    spec = load_task("heart_disease")
    prepare_sites(data_dir, workdir)
    frames = []
    for hospital in HOSPITALS:
        data = load_site_data(workdir / hospital, spec)
        frames += [data.train_frame, data.test_frame]
    return spec, pd.concat(frames, ignore_index=True)


def load_clinic(workdir: Path, task: str, clinic: ClinicProfile, *, seed: int = 0) -> tuple[TaskSpec, pd.DataFrame]:
    """One synthetic clinic's accepted rows of ``task``, through its export and Fenji's ingest."""
    from node_agent.ingest import ingest_file
    from node_agent.mapping import load_mapping
    from node_agent.store import SiteStore
    from simulation.synth import write_federation

    spec = load_task(task)
    ((_, path, mapping),) = write_federation(workdir / "exports", clinics=[clinic], seed=seed)
    with SiteStore(workdir / "site") as store:
        ingest_file(store, spec, path, load_mapping(mapping))
        return spec, store.load(spec)


def default_datasets(data_dir: Path) -> dict[str, Callable[[Path], tuple[TaskSpec, pd.DataFrame]]]:
    """Heart disease (four hospitals pooled) and the largest synthetic clinic's referral and triage tasks."""
    clinic = DEFAULT_CLINICS[0]
    return {"heart": lambda workdir: load_heart(data_dir, workdir),
            "clinic_referral": lambda workdir: load_clinic(workdir, "referral_risk", clinic),
            "clinic_triage": lambda workdir: load_clinic(workdir, "triage", clinic)}


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


def _measure(name: str, spec: TaskSpec, frame: pd.DataFrame, *, seeds: int, epochs: int, epsilons: Sequence[float],
             delta: float, progress: Callable[[], None] | None) -> list[dict]:
    """One data set and model family at every privacy level, over the seeds."""
    out = []
    for epsilon in [None, *epsilons]:
        runs = []
        for seed in range(seeds):
            members, nonmembers = _split(frame, seed)
            runs.append(run_setting(spec, members, nonmembers, epochs=epochs, seed=seed, epsilon=epsilon, delta=delta))
            if progress:
                progress()
            if "unsupported" in runs[-1]:
                break  # the same refusal for every seed
        out.append({"dataset": name, "task": spec.name, "family": spec.model.family, "epsilon": epsilon,
                    "delta": None if epsilon is None else delta,
                    "attack_auroc_bound": 1.0 if epsilon is None else dp_auroc_bound(epsilon, delta), **_summary(runs)})
    return out


def run(*, datasets: dict[str, Callable[[Path], tuple[TaskSpec, pd.DataFrame]]], seeds: int = 5,
        epochs: int = EPOCHS, epsilons: Sequence[float] = EPSILONS, delta: float = DELTA,
        families: Sequence[str] = ("logistic", "mlp"), progress: Callable[[], None] | None = None) -> dict:
    """Every data set × model family × privacy level × seed.

    ``datasets`` maps a name to a loader that builds its rows under a given temporary folder; a loader
    that raises ``BenchUnavailable`` (no data here) is recorded as unavailable and skipped.
    """
    results, rows, unavailable = [], {}, {}
    # Models of a few thousand parameters: torch's intra-op threads cost more than they save (3-10×
    # slower on 2 busy cores), so each model trains on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="fenji-membership-") as tmp:
            for name, loader in datasets.items():
                try:
                    base, frame = loader(Path(tmp) / name)
                except BenchUnavailable as exc:
                    unavailable[name] = str(exc)
                    continue
                half = len(frame) // 2
                rows[name] = {"task": base.name, "label": base.label.kind, "rows": len(frame), "members": half,
                              "nonmembers": half}
                for family in families:
                    results += _measure(name, with_family(base, family), frame, seeds=seeds, epochs=epochs,
                                        epsilons=epsilons, delta=delta, progress=progress)
    finally:
        torch.set_num_threads(threads)
    return {
        "benchmark": "membership",
        "inputs": {"seeds": seeds, "epochs": epochs, "epsilons": list(epsilons), "delta": delta,
                   "families": {f: FAMILIES.get(f, f) for f in families},
                   "training": "centrally on the members with models.training.train and the task's learning rate, "
                               "batch size and weight decay, for the given epochs; with DP, DP-SGD (Opacus: Poisson "
                               "sampling, per-record clipping at norm 1, RDP accountant) spends (ε, δ) over the "
                               "whole run",
                   "split": "each seed: a random half of the rows are members, the other half non-members",
                   "data": rows, "unavailable": unavailable},
        "attack": ATTACK,
        "environment": environment(),
        "results": results,
    }


def plot(report: dict, path) -> None:
    """Attack AUROC against model AUROC, one panel per data set: median, whiskers min–max over seeds."""
    colours = {None: "tab:red", 8.0: "tab:orange", 1.0: "tab:green"}
    markers = {"logistic": "o", "mlp": "s"}
    datasets = list(dict.fromkeys(r["dataset"] for r in report["results"]))
    fig, axes = subplots(1, max(len(datasets), 1), figsize=(4 * max(len(datasets), 1), 4.2), sharey=True, squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for r in report["results"]:
            if r["dataset"] != dataset or "unsupported" in r:
                continue
            x, y = r["auroc"], r["attack_auroc"]
            ax.errorbar(x["median"], y["median"], xerr=[[x["median"] - x["min"]], [x["max"] - x["median"]]],
                        yerr=[[y["median"] - y["min"]], [y["max"] - y["median"]]], fmt=markers.get(r["family"], "^"),
                        color=colours.get(r["epsilon"], "tab:blue"), ms=7, capsize=2, lw=1)
        ax.axhline(0.5, color="grey", ls="--", lw=1)
        for epsilon in report["inputs"]["epsilons"]:
            bound = dp_auroc_bound(epsilon, report["inputs"]["delta"])
            if bound < 0.99:  # ε = 8 bounds nothing an attack on these data reaches
                ax.axhline(bound, color=colours.get(epsilon, "tab:blue"), ls=":", lw=1)
        task = report["inputs"]["data"][dataset]["task"]
        ax.set_title(f"{dataset} ({task})", fontsize=9)
        ax.set_xlabel("model AUROC, held-out rows")
    axes[0][0].set_ylabel("membership attack AUROC (loss threshold)")
    handles = [axes[0][0].plot([], [], "o", color=c, label="no DP" if e is None else f"DP ε = {e:g}")[0]
               for e, c in colours.items()]
    handles += [axes[0][0].plot([], [], m, color="black", mfc="white", label=f)[0] for f, m in markers.items()]
    handles += [axes[0][0].plot([], [], "--", color="grey", lw=1, label="chance")[0],
                axes[0][0].plot([], [], ":", color=colours[1.0], lw=1, label="ε = 1: no attack above")[0]]
    axes[0][0].legend(handles=handles, fontsize=7, loc="upper left")
    fig.suptitle("Membership inference on the released model: what ε buys (median, min–max over seeds)", fontsize=10)
    save_figure(fig, path)


def table(report: dict):
    """The printed summary: one row per data set, model and privacy level."""
    from rich.table import Table

    inputs = report["inputs"]
    out = Table("data", "model", "ε (δ)", "accuracy", "AUROC", "attack AUROC median [min, max]", "attack advantage",
                "any attack ≤", title=f"Loss-threshold membership inference, {inputs['seeds']} seed(s), "
                                      f"{inputs['epochs']} epochs (model metrics: held-out medians)")
    for r in report["results"]:
        privacy = "no DP" if r["epsilon"] is None else f"{r['epsilon']:g} ({r['delta']:g})"
        if "unsupported" in r:
            out.add_row(r["dataset"], r["family"], privacy, "unsupported", "", r["unsupported"][:60], "", "")
            continue
        a = r["attack_auroc"]
        out.add_row(r["dataset"], r["family"], privacy, f"{r['accuracy']['median']:.3f}", f"{r['auroc']['median']:.3f}",
                    f"{a['median']:.3f} [{a['min']:.3f}, {a['max']:.3f}]", f"{r['attack_advantage']['median']:+.3f}",
                    f"{r['attack_auroc_bound']:.3f}")
    return out
