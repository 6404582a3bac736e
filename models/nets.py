"""PyTorch models for a task spec, and their parameters as one flat vector.

- binary: one logit;
- multiclass: one logit per class;
- ordinal: a cumulative-link (proportional-odds) model, ``P(Y <= k | x) = sigmoid((c_k - s(x)) / T)``
  with one score ``s(x)`` and cut points ``c_1 < ... < c_{K-1}`` kept ordered by construction
  (first cut plus positive gaps), so the class probabilities are never negative and the cumulative
  probabilities never decrease, whatever the parameters (also after federated averaging).

Every model's ``forward`` returns class log-scores that ``softmax`` turns into probabilities (for an
ordinal model they are log-probabilities already), so the same loss and prediction code serves all.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.spec import TaskSpec

__all__ = ["OrdinalModel", "build_model", "get_flat", "num_outputs", "set_flat"]


def num_outputs(spec: TaskSpec) -> int:
    """Width of the model's body: 1 for binary and ordinal (one score), else one per class."""
    return len(spec.label.classes) if spec.label.kind == "multiclass" else 1


class OrdinalModel(nn.Module):
    """Cumulative-link model over ``n_classes`` ordered classes on top of a one-output ``body``."""

    def __init__(self, body: nn.Module, n_classes: int) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError("an ordinal model needs at least two classes")
        self.n_classes = n_classes
        # The raw cut parameters [first cut, gap_1 .. gap_{K-2}] are the one row of an embedding looked
        # up once per example: the same values and the same flat layout as two plain parameters, but
        # a layer Opacus computes per-sample gradients for (DP-SGD for ordinal tasks). Cut points
        # start evenly spaced one logit apart, centred on 0 (softplus of the gap = 1).
        self.cuts = nn.Embedding(1, n_classes - 1)
        with torch.no_grad():
            self.cuts.weight[0, 0] = -(n_classes - 2) / 2.0
            self.cuts.weight[0, 1:] = math.log(math.e - 1.0)
        self.body = body

    @staticmethod
    def _ordered(raw: torch.Tensor) -> torch.Tensor:
        """Cut points from raw parameters (last axis): the first cut plus positive gaps."""
        first = raw[..., :1]
        return torch.cat([first, first + torch.cumsum(F.softplus(raw[..., 1:]), dim=-1)], dim=-1)

    def cutpoints(self) -> torch.Tensor:
        return self._ordered(self.cuts.weight[0])

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The latent score, shape (n,); higher means a later class."""
        return self.body(x)[:, 0]

    def cumulative(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """``P(Y <= k)`` for k = 1 .. K-1, shape (n, K-1), non-decreasing along k."""
        cuts = self._ordered(self.cuts(torch.zeros(x.shape[0], dtype=torch.long, device=x.device)))
        return torch.sigmoid((cuts - self.score(x)[:, None]) / temperature)

    def forward(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        cum = self.cumulative(x, temperature)
        zeros, ones = torch.zeros_like(cum[:, :1]), torch.ones_like(cum[:, :1])
        probs = torch.diff(torch.cat([zeros, cum, ones], dim=1), dim=1)
        return torch.log(probs.clamp_min(1e-12))


def _body(spec: TaskSpec, n_inputs: int, out: int) -> nn.Module:
    if spec.model.family == "logistic":
        model = nn.Linear(n_inputs, out)
        nn.init.zeros_(model.weight)
        nn.init.zeros_(model.bias)
        return model
    layers: list[nn.Module] = []
    width = n_inputs
    for hidden in spec.model.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, out))
    return nn.Sequential(*layers)


def build_model(spec: TaskSpec, n_inputs: int, *, seed: int = 0) -> nn.Module:
    """The task's model family (logistic: a linear layer; mlp) with the head its label kind needs."""
    torch.manual_seed(seed)
    body = _body(spec, n_inputs, num_outputs(spec))
    if spec.label.kind == "ordinal":
        return OrdinalModel(body, len(spec.label.classes))
    return body


def get_flat(model: nn.Module) -> np.ndarray:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().cpu().numpy().astype(np.float64)


def set_flat(model: nn.Module, flat: np.ndarray) -> nn.Module:
    vector = torch.as_tensor(np.asarray(flat), dtype=torch.float32)
    torch.nn.utils.vector_to_parameters(vector, model.parameters())
    return model
