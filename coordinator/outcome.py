"""What a federated run is asked to do (``RunSettings``) and what it produced (``FederationOutcome``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from coordinator.strategy import ExcludedReply
from models.calibration import Calibration
from models.encoding import EncodingParams
from models.spec import TaskSpec, load_task

__all__ = ["FederationOutcome", "RunSettings"]


@dataclass
class RunSettings:
    """Everything a federated run needs to know; from ``[tool.flwr.app.config]`` or the CLI."""

    task: TaskSpec
    rounds: int = 20
    encrypt: bool = True
    min_sites: int = 3
    local_epochs: int | None = None
    learning_rate: float | None = None
    proximal_mu: float = 0.0
    seed: int = 0
    timeout: float = 600.0
    dp_epsilon: float | None = None
    dp_delta: float = 1e-3
    dp_max_grad_norm: float = 1.0
    packed: bool = True  # model updates packed (federation.packing) when the key holder offers a packed context

    @classmethod
    def from_run_config(cls, run_config: dict) -> RunSettings:
        return cls(
            task=load_task(str(run_config.get("task", "referral_risk"))),
            rounds=int(run_config.get("num-server-rounds", 20)),
            encrypt=bool(run_config.get("encrypt", True)),
            min_sites=int(run_config.get("min-sites", 3)),
            proximal_mu=float(run_config.get("proximal-mu", 0.0)),
            packed=bool(run_config.get("packed", True)),
        )


@dataclass
class FederationOutcome:
    """What a federated run produced: the global model and the declared numbers about it."""

    task: TaskSpec
    encoding: EncodingParams
    flat: np.ndarray
    n_inputs: int
    sites: dict[str, dict[str, float]] = field(default_factory=dict)
    rounds: list[dict[str, float]] = field(default_factory=list)
    encrypted: bool = True
    seconds: float = 0.0
    calibration: Calibration = field(default_factory=Calibration)
    train_rows: dict[str, int] = field(default_factory=dict)
    personalisation: dict[str, str] = field(default_factory=dict)
    excluded: list[ExcludedReply] = field(default_factory=list)  # replies left out, phase by phase
    site_audit_heads: dict[str, str] = field(default_factory=dict)  # each node audit log's head at the end
