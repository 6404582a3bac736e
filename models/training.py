"""Local training and evaluation: plain functions, callable without Flower."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from models.spec import TaskSpec

__all__ = ["TrainConfig", "dp_noise_multiplier", "evaluate", "predict_proba", "train"]


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

    @classmethod
    def from_spec(cls, spec: TaskSpec, **overrides: float) -> TrainConfig:
        m = spec.model
        base = cls(epochs=m.local_epochs, learning_rate=m.learning_rate, batch_size=m.batch_size,
                   weight_decay=m.weight_decay)
        for key, value in overrides.items():
            setattr(base, key, type(getattr(base, key))(value))
        return base


def _loss(spec: TaskSpec) -> nn.Module:
    return nn.BCEWithLogitsLoss() if spec.label.kind == "binary" else nn.CrossEntropyLoss()


def _targets(spec: TaskSpec, y: np.ndarray) -> torch.Tensor:
    if spec.label.kind == "binary":
        return torch.as_tensor(y, dtype=torch.float32)[:, None]
    return torch.as_tensor(y, dtype=torch.long)


def dp_noise_multiplier(*, epsilon: float, delta: float, n: int, batch_size: int, epochs: int) -> float:
    """The DP-SGD noise that spends exactly (epsilon, delta) over ``epochs`` passes (RDP accountant)."""
    from opacus.accountants.utils import get_noise_multiplier

    sample_rate = min(batch_size / max(n, 1), 1.0)
    steps = max(int(round(epochs / sample_rate)), 1)
    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant="rdp"))


def _train_dp(model: nn.Module, spec: TaskSpec, xt: torch.Tensor, yt: torch.Tensor, config: TrainConfig) -> float:
    """DP-SGD with Poisson sampling, per-sample clipping and Gaussian noise (Opacus)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    n = len(xt)
    sample_rate = min(config.batch_size / n, 1.0)
    generator = torch.Generator().manual_seed(config.seed)
    sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=sample_rate, generator=generator)
    wrapped = GradSampleModule(model)
    optimiser = DPOptimizer(
        torch.optim.SGD(wrapped.parameters(), lr=config.learning_rate),
        noise_multiplier=config.dp_noise_multiplier, max_grad_norm=config.dp_max_grad_norm,
        expected_batch_size=max(int(n * sample_rate), 1), generator=generator,
    )
    loss_fn = _loss(spec)
    steps = max(int(round(config.epochs / sample_rate)), 1)
    total, seen = 0.0, 0
    batches = iter(())
    for _ in range(steps):
        idx = next(batches, None)
        if idx is None:
            batches = iter(sampler)
            idx = next(batches)
        optimiser.zero_grad()
        if len(idx) == 0:  # Poisson sampling may draw an empty batch: still a noisy step
            optimiser.step()
            continue
        idx = torch.as_tensor(idx)
        loss = loss_fn(wrapped(xt[idx]), yt[idx])
        with warnings.catch_warnings():
            # Opacus' hooks on a model whose inputs need no gradient: expected, and harmless.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        optimiser.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
    wrapped._close()
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


@torch.no_grad()
def predict_proba(model: nn.Module, spec: TaskSpec, x: np.ndarray) -> np.ndarray:
    """Class probabilities, shape (n, n_classes)."""
    model.eval()
    logits = model(torch.as_tensor(x, dtype=torch.float32))
    if spec.label.kind == "binary":
        p = torch.sigmoid(logits)[:, 0]
        return torch.stack([1 - p, p], dim=1).numpy()
    return torch.softmax(logits, dim=1).numpy()


def evaluate(model: nn.Module, spec: TaskSpec, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """AUROC (macro one-vs-rest for several classes), accuracy and log loss on (x, y)."""
    if len(x) == 0:
        return {"auroc": math.nan, "accuracy": math.nan, "log-loss": math.nan, "n": 0.0}
    proba = predict_proba(model, spec, x)
    accuracy = float((proba.argmax(axis=1) == y).mean())
    eps = 1e-7
    log_loss = float(-np.log(np.clip(proba[np.arange(len(y)), y], eps, 1)).mean())
    try:
        if proba.shape[1] == 2:
            auroc = float(roc_auc_score(y, proba[:, 1]))
        else:
            auroc = float(roc_auc_score(y, proba, multi_class="ovr", average="macro",
                                        labels=list(range(proba.shape[1]))))
    except ValueError:  # one class only in this test set
        auroc = math.nan
    return {"auroc": auroc, "accuracy": accuracy, "log-loss": log_loss, "n": float(len(y))}
