"""Calibration: probabilities a doctor can read as probabilities.

Fitted federatedly on aggregated statistics, in one encrypted round:

- **binary** tasks (referral risk): *Platt scaling* ``p = sigmoid(a * z + b)`` of the model's logit
  ``z``. Each site sends a histogram of its logits per outcome (``LOGIT_EDGES``); the key holder
  decrypts only the sum over at least ``min-sites`` sites, and the coordinator fits ``a, b`` by
  weighted logistic regression on the bin centres. The summed histogram is also a federated
  reliability picture, and no site's logits are ever seen.
- **multiclass and ordinal** tasks: *temperature scaling*. Each site sends its summed negative
  log-likelihood at every temperature of ``TEMPERATURE_GRID``; the coordinator picks the temperature
  with the smallest federated total. For an ordinal model the temperature divides the cumulative
  logits, so the calibrated model is still a cumulative-link model (ordinal consistency kept).

``expected_calibration_error`` is the usual binned ECE: for a binary task on the positive class's
probability (the risk itself), for several classes on the top-label confidence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from models.spec import TaskSpec

__all__ = [
    "Calibration",
    "LOGIT_EDGES",
    "TEMPERATURE_GRID",
    "calibrated_proba",
    "calibration_statistics",
    "calibration_statistics_size",
    "expected_calibration_error",
    "fit_calibration",
    "model_outputs",
    "reliability",
]

LOGIT_EDGES = np.linspace(-12.0, 12.0, 121)  # 120 bins of 0.2 logit
TEMPERATURE_GRID = np.exp(np.linspace(np.log(0.25), np.log(4.0), 81))


@dataclass
class Calibration:
    """A fitted calibration map; the identity by default."""

    kind: Literal["none", "platt", "temperature"] = "none"
    slope: float = 1.0
    intercept: float = 0.0
    temperature: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict | None) -> Calibration:
        return cls(**raw) if raw else cls()


@torch.no_grad()
def model_outputs(model: nn.Module, spec: TaskSpec, x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Binary: the logit, shape (n,). Otherwise class log-scores at ``temperature``, shape (n, K)."""
    model.eval()
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if spec.label.kind == "ordinal":
        return model(xt, temperature).numpy()
    out = model(xt).numpy().astype(np.float64)
    return out[:, 0] if spec.label.kind == "binary" else out / temperature


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def calibrated_proba(model: nn.Module, spec: TaskSpec, x: np.ndarray, calibration: Calibration | None = None) -> np.ndarray:
    """Class probabilities, shape (n, K), after ``calibration``."""
    cal = calibration or Calibration()
    if spec.label.kind == "binary":
        z = model_outputs(model, spec, x)
        p = 1.0 / (1.0 + np.exp(-(cal.slope * z + cal.intercept)))
        return np.stack([1 - p, p], axis=1)
    return _softmax(model_outputs(model, spec, x, cal.temperature if cal.kind == "temperature" else 1.0))


def calibration_statistics_size(spec: TaskSpec) -> int:
    return 2 * (len(LOGIT_EDGES) - 1) if spec.label.kind == "binary" else len(TEMPERATURE_GRID) + 1


def calibration_statistics(model: nn.Module, spec: TaskSpec, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """What one site adds to the federated calibration (see the module's docstring)."""
    if spec.label.kind == "binary":
        z = np.clip(model_outputs(model, spec, x), LOGIT_EDGES[0], LOGIT_EDGES[-1])
        negatives, _ = np.histogram(z[y == 0], bins=LOGIT_EDGES)
        positives, _ = np.histogram(z[y == 1], bins=LOGIT_EDGES)
        return np.concatenate([negatives, positives]).astype(float)
    nll = []
    for t in TEMPERATURE_GRID:
        proba = _softmax(model_outputs(model, spec, x, float(t)))
        nll.append(float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, 1)).sum()))
    return np.asarray([*nll, float(len(y))])


def fit_calibration(spec: TaskSpec, summed: np.ndarray) -> Calibration:
    """The calibration map from the sum of the sites' ``calibration_statistics``."""
    summed = np.asarray(summed, dtype=float)
    if spec.label.kind != "binary":
        return Calibration(kind="temperature", temperature=float(TEMPERATURE_GRID[int(np.argmin(summed[:-1]))]))
    from sklearn.linear_model import LogisticRegression

    bins = len(LOGIT_EDGES) - 1
    centres = (LOGIT_EDGES[:-1] + LOGIT_EDGES[1:]) / 2
    counts = np.clip(np.round(summed), 0, None)  # CKKS noise: counts are whole numbers
    x = np.concatenate([centres, centres])[:, None]
    y = np.concatenate([np.zeros(bins), np.ones(bins)])
    keep = counts > 0
    if len(set(y[keep])) < 2:
        return Calibration()
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(x[keep], y[keep], sample_weight=counts[keep])
    return Calibration(kind="platt", slope=float(fit.coef_[0, 0]), intercept=float(fit.intercept_[0]))


def _confidence(proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if proba.shape[1] == 2:
        return proba[:, 1], (y == 1).astype(float)
    return proba.max(axis=1), (proba.argmax(axis=1) == y).astype(float)


def reliability(proba: np.ndarray, y: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    """Per equal-width confidence bin: mean predicted probability, observed frequency, count."""
    conf, hit = _confidence(np.asarray(proba, dtype=float), np.asarray(y))
    index = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    rows = []
    for b in range(n_bins):
        mask = index == b
        if mask.any():
            rows.append({"bin": b, "predicted": float(conf[mask].mean()), "observed": float(hit[mask].mean()),
                         "count": int(mask.sum())})
    return rows


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    """Binned ECE: sum over bins of (bin share) x |observed frequency - mean predicted probability|."""
    n = len(y)
    if n == 0:
        return float("nan")
    return float(sum(r["count"] / n * abs(r["observed"] - r["predicted"]) for r in reliability(proba, y, n_bins)))
