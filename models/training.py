"""Local training and evaluation: plain functions, callable without Flower."""

from __future__ import annotations

import math
import secrets
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from torch import nn

from models.calibration import Calibration, calibrated_proba, expected_calibration_error
from models.spec import TaskSpec

__all__ = ["DP_SGD", "RELEASE_LOSS_CAP", "DPSGDChoices", "TrainConfig", "dp_noise_multiplier", "dp_train_config",
           "evaluate", "metrics_from_proba", "predict_proba", "predicted_level", "train"]

# Per-row log loss of the released ``log-loss`` is capped here (true-class probability floored at 0.1),
# so one row moves it by at most this over n: the egress guard's grid step scales with it.
RELEASE_LOSS_CAP = math.log(10.0)


@dataclass
class TrainConfig:
    epochs: int = 5
    learning_rate: float = 0.05
    batch_size: int = 64
    weight_decay: float = 1e-4
    proximal_mu: float = 0.0
    seed: int = 0
    # Record-level differential privacy (DP-SGD, Opacus): noise multiplier 0 means off.
    dp_noise_multiplier: float = 0.0
    dp_max_grad_norm: float = 1.0
    dp_momentum: float = 0.0  # momentum and weight decay on the noised gradients: post-processing, free
    dp_weight_decay: float = 0.0
    dp_average_iterates: bool = False  # DP-SGD returns its weights averaged over its second half of steps
    # Demo and tests only (node_agent.policy.DPPolicy.noise_seed): whoever knows it can predict the
    # noise. None: the noise is seeded from the OS.
    dp_noise_seed: int | None = None

    @classmethod
    def from_spec(cls, spec: TaskSpec, **overrides: float) -> TrainConfig:
        m = spec.model
        base = cls(epochs=m.local_epochs, learning_rate=m.learning_rate, batch_size=m.batch_size,
                   weight_decay=m.weight_decay)
        for key, value in overrides.items():
            setattr(base, key, type(getattr(base, key))(value))
        return base


def _loss(spec: TaskSpec) -> nn.Module:
    # Ordinal models return log-probabilities, on which cross-entropy is exactly their likelihood.
    return nn.BCEWithLogitsLoss() if spec.label.kind == "binary" else nn.CrossEntropyLoss()


def _targets(spec: TaskSpec, y: np.ndarray) -> torch.Tensor:
    if spec.label.kind == "binary":
        return torch.as_tensor(y, dtype=torch.float32)[:, None]
    return torch.as_tensor(y, dtype=torch.long)


def dp_noise_multiplier(*, epsilon: float, delta: float, n: int, batch_size: int, epochs: int, rounds: int = 1) -> float:
    """The DP-SGD noise that spends exactly (epsilon, delta) over ``rounds`` trainings of ``epochs``
    passes each (RDP accountant): the steps counted are those ``_train_dp`` takes."""
    from opacus.accountants.utils import get_noise_multiplier

    sample_rate, steps = _dp_steps(n, batch_size, epochs)
    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps * rounds, accountant="rdp"))


@dataclass(frozen=True)
class DPSGDChoices:
    """How a site trains under DP-SGD, where that differs from its plan's settings.

    Each choice is either post-processing of the noised gradients (momentum, weight decay, the
    learning rate) or a change the accountant is told about (the expected batch and the local
    epochs set the sample rate and the number of steps the noise is computed for): the privacy
    spent stays exactly the site's epsilon per run. Measured on the demo's clinics
    (``bench/dp_utility.py``, epsilon 1.5 per run, delta 1e-4): the clinics are small (109 to 814
    rows), so the noise multiplier is 5 to 10 and the noise dominates. Twice the plan's learning rate
    lifts the global diagnosis model from 0.830 to 0.841 macro AUROC; a larger batch, fewer epochs,
    momentum, weight decay, iterate averaging or a larger step all did worse. It is not enough:
    diagnosis (0.849 vs 0.851 local-only) and diagnosis_text (0.869 vs 0.902) stay below the
    clinics' local-only models; triage and referral risk keep their gains.
    """

    batch_size: int = 64  # expected Poisson batch: larger means fewer steps, each with relatively less noise
    max_epochs: int = 5  # local epochs per round at most: fewer steps, less noise per step
    learning_rate_scale: float = 2.0  # clipped gradients are small: a larger step makes up for part of it
    momentum: float = 0.0
    weight_decay: float = 0.0
    # Return the mean of the weights over the second half of the steps, not the last: the noise of
    # single steps averages out (post-processing).
    average_iterates: bool = False


DP_SGD = DPSGDChoices()


def dp_train_config(config: TrainConfig, *, n: int, epsilon: float, delta: float, max_grad_norm: float,
                    rounds: int, noise_seed: int | None = None, choices: DPSGDChoices | None = None) -> TrainConfig:
    """``config`` for DP-SGD on ``n`` rows: ``choices`` applied, and the noise that spends exactly
    (epsilon, delta) over all ``rounds`` rounds' steps (``_train_dp`` takes the same number each round)."""
    choices = choices or DP_SGD
    out = replace(config, batch_size=max(min(choices.batch_size, n), 1), epochs=min(config.epochs, choices.max_epochs),
                  learning_rate=config.learning_rate * choices.learning_rate_scale, dp_momentum=choices.momentum,
                  dp_weight_decay=choices.weight_decay, dp_average_iterates=choices.average_iterates,
                  dp_max_grad_norm=max_grad_norm, dp_noise_seed=noise_seed)
    out.dp_noise_multiplier = dp_noise_multiplier(epsilon=epsilon, delta=delta, n=n, batch_size=out.batch_size,
                                                  epochs=out.epochs, rounds=rounds)
    return out


def _dp_steps(n: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """Poisson sample rate and the number of DP-SGD steps of ``epochs`` passes over ``n`` rows."""
    sample_rate = min(batch_size / max(n, 1), 1.0)
    return sample_rate, max(round(epochs / sample_rate), 1)


def _train_dp(model: nn.Module, spec: TaskSpec, xt: torch.Tensor, yt: torch.Tensor, config: TrainConfig) -> float:
    """DP-SGD with Poisson sampling, per-sample clipping and Gaussian noise (Opacus)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    n = len(xt)
    sample_rate, steps = _dp_steps(n, config.batch_size, config.epochs)
    # The noise must be unpredictable: seeded from the OS, never from ``config.seed`` (which a
    # coordinator may choose, and could then subtract the noise). Only the synthetic demo and tests
    # give a site-side ``dp_noise_seed``, which whoever knows it can use to predict the noise.
    seed = secrets.randbits(63) if config.dp_noise_seed is None else config.dp_noise_seed
    generator = torch.Generator().manual_seed(seed)
    sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=sample_rate, generator=generator)
    wrapped = GradSampleModule(model)
    # Momentum and weight decay act on the noised, clipped mean gradient: post-processing.
    optimiser = DPOptimizer(
        torch.optim.SGD(wrapped.parameters(), lr=config.learning_rate, momentum=config.dp_momentum,
                        weight_decay=config.dp_weight_decay),
        noise_multiplier=config.dp_noise_multiplier, max_grad_norm=config.dp_max_grad_norm,
        expected_batch_size=max(int(n * sample_rate), 1), generator=generator,
    )
    loss_fn = _loss(spec)
    total, seen = 0.0, 0
    batches = iter(())
    parameters = [p for p in model.parameters() if p.requires_grad]
    averaged = [torch.zeros_like(p) for p in parameters]
    average_from = steps // 2 if config.dp_average_iterates else steps
    for step in range(steps):
        idx = next(batches, None)
        if idx is None:
            batches = iter(sampler)
            idx = next(batches)
        optimiser.zero_grad()
        if len(idx) == 0:  # Poisson sampling may draw an empty batch: still a noisy step
            optimiser.step()
        else:
            idx = torch.as_tensor(idx)
            loss = loss_fn(wrapped(xt[idx]), yt[idx])
            with warnings.catch_warnings():
                # Opacus' hooks on a model whose inputs need no gradient: expected, and harmless.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        if step >= average_from:
            with torch.no_grad():
                for mean, p in zip(averaged, parameters):
                    mean.add_(p, alpha=1.0 / (steps - average_from))
    wrapped._close()
    if average_from < steps:
        with torch.no_grad():
            for mean, p in zip(averaged, parameters):
                p.copy_(mean)
    return total / max(seen, 1)


def train(model: nn.Module, spec: TaskSpec, x: np.ndarray, y: np.ndarray, config: TrainConfig) -> float:
    """Train ``model`` in place on (x, y) with mini-batch SGD; return the last epoch's mean loss.

    With ``proximal_mu > 0`` the FedProx term keeps the local model near where it started.
    """
    if len(x) == 0:
        return float("nan")
    generator = torch.Generator().manual_seed(config.seed)
    xt, yt = torch.as_tensor(np.array(x, dtype=np.float32)), _targets(spec, np.array(y))
    if config.dp_noise_multiplier > 0:
        return _train_dp(model, spec, xt, yt, config)
    loss_fn = _loss(spec)
    optimiser = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=0.9,
                                weight_decay=config.weight_decay)
    start = [p.detach().clone() for p in model.parameters()]
    model.train()
    epoch_loss = float("nan")
    for _ in range(config.epochs):
        order = torch.randperm(len(xt), generator=generator)
        total = 0.0
        for i in range(0, len(xt), config.batch_size):
            idx = order[i : i + config.batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            if config.proximal_mu > 0:
                prox = sum(((p - s) ** 2).sum() for p, s in zip(model.parameters(), start))
                loss = loss + config.proximal_mu / 2 * prox
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        epoch_loss = total / len(xt)
    return epoch_loss


def predict_proba(model: nn.Module, spec: TaskSpec, x: np.ndarray, calibration: Calibration | None = None) -> np.ndarray:
    """Class probabilities, shape (n, n_classes), optionally calibrated."""
    return calibrated_proba(model, spec, x, calibration)


def predicted_level(proba: np.ndarray) -> np.ndarray:
    """An ordinal prediction: the median class (first class whose cumulative probability reaches 1/2)."""
    return np.minimum((np.cumsum(proba, axis=1) < 0.5).sum(axis=1), proba.shape[1] - 1)


def metrics_from_proba(spec: TaskSpec, proba: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """AUROC (macro one-vs-rest for several classes), accuracy, log loss and ECE; top-3 accuracy for
    multiclass; quadratic-weighted kappa for ordinal labels."""
    n = len(y)
    if n == 0:
        return {"auroc": math.nan, "accuracy": math.nan, "log-loss": math.nan, "ece": math.nan, "n": 0.0}
    k = proba.shape[1]
    predicted = predicted_level(proba) if spec.label.kind == "ordinal" else proba.argmax(axis=1)
    out = {
        "accuracy": float((predicted == y).mean()),
        "log-loss": float(-np.log(np.clip(proba[np.arange(n), y], 1e-7, 1)).mean()),
        "ece": expected_calibration_error(proba, y),
        "n": float(n),
    }
    try:
        if k == 2:
            out["auroc"] = float(roc_auc_score(y, proba[:, 1]))
        else:
            # Macro over the classes present in this test set (a class absent here has no AUROC).
            present = [c for c in range(k) if 0 < (y == c).sum() < n]
            out["auroc"] = float(np.mean([roc_auc_score(y == c, proba[:, c]) for c in present])) if present else math.nan
    except ValueError:
        out["auroc"] = math.nan
    if spec.label.kind == "multiclass":
        top3 = np.argsort(-proba, axis=1)[:, :3]
        out["top3-accuracy"] = float((top3 == y[:, None]).any(axis=1).mean())
    if spec.label.kind == "ordinal":
        out["kappa"] = float(cohen_kappa_score(y, predicted, weights="quadratic", labels=list(range(k))))
    return out | _release_inputs(proba, y, predicted, out.get("kappa"))


def _release_inputs(proba: np.ndarray, y: np.ndarray, predicted: np.ndarray, kappa: float | None) -> dict[str, float]:
    """What the egress guard needs to round the metrics above (``node_agent.egress.release``), which
    it strips before anything leaves: the capped log loss, and the rows one patient is "one of" for
    AUROC (its smaller class) and kappa (see the threat model, "Metrics above the minimum n")."""
    n, k = proba.shape
    per_row = -np.log(np.clip(proba[np.arange(n), y], 1e-7, 1))
    out = {"release-log-loss": float(np.minimum(per_row, RELEASE_LOSS_CAP).mean())}
    sizes = np.bincount(y, minlength=k)
    if k == 2:  # one row moves the AUROC by at most 1 / (the size of its class)
        out["release-auroc-rows"] = float(min(sizes)) if min(sizes) > 0 else 0.0
    else:  # macro: a row of class c moves AUROC_c by 1 / n_c and every other AUROC_c' by 1 / (n - n_c')
        present = [c for c in range(k) if 0 < sizes[c] < n]
        others = sum(1.0 / (n - sizes[c]) for c in present)
        moves = [(1.0 / sizes[c] + others - 1.0 / (n - sizes[c])) / len(present) for c in present]
        out["release-auroc-rows"] = float(1.0 / max(moves)) if present else 0.0
    if kappa is not None:
        weights = np.subtract.outer(np.arange(k), np.arange(k)) ** 2 / max(k - 1, 1) ** 2
        expected = float(sizes / n @ weights @ (np.bincount(predicted, minlength=k) / n))
        # kappa = 1 - D_o / D_e: one row moves D_o by 1/n and D_e by 2/n, so kappa by (3 - 2 kappa) / (n D_e).
        out["release-kappa-rows"] = n * expected / (3 - 2 * kappa) if expected > 0 and np.isfinite(kappa) else 0.0
    return out


def evaluate(model: nn.Module, spec: TaskSpec, x: np.ndarray, y: np.ndarray,
             calibration: Calibration | None = None) -> dict[str, float]:
    """``metrics_from_proba`` of the (calibrated) model on (x, y)."""
    if len(x) == 0:
        return metrics_from_proba(spec, np.zeros((0, 2)), np.zeros(0, dtype=int))
    return metrics_from_proba(spec, predict_proba(model, spec, x, calibration), np.asarray(y))
