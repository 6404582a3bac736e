"""PyTorch models for a task spec, and their parameters as one flat vector."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.spec import TaskSpec

__all__ = ["build_model", "get_flat", "num_outputs", "set_flat"]


def num_outputs(spec: TaskSpec) -> int:
    return 1 if spec.label.kind == "binary" else len(spec.label.classes)


def build_model(spec: TaskSpec, n_inputs: int, *, seed: int = 0) -> nn.Module:
    """The task's model family: logistic (a linear layer) or an MLP."""
    torch.manual_seed(seed)
    out = num_outputs(spec)
    if spec.model.family == "logistic":
        model: nn.Module = nn.Linear(n_inputs, out)
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


def get_flat(model: nn.Module) -> np.ndarray:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().cpu().numpy().astype(np.float64)


def set_flat(model: nn.Module, flat: np.ndarray) -> nn.Module:
    vector = torch.as_tensor(np.asarray(flat), dtype=torch.float32)
    torch.nn.utils.vector_to_parameters(vector, model.parameters())
    return model
