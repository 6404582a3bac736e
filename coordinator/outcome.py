"""What a federated run is asked to do (``RunSettings``) and what it produced (``FederationOutcome``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from coordinator.strategy import ExcludedReply
from federation.errors import SettingsError
from models.calibration import Calibration
from models.encoding import EncodingParams
from models.spec import TaskSpec, load_task

__all__ = ["ROUND_TIMEOUT", "FederationOutcome", "RunSettings"]

# Seconds a phase waits for the sites' replies (run config ``round-timeout``): a connected site whose
# round takes longer is left out of it. Generous for a clinic PC's encrypted round of the demo's models
# (seconds to a minute), short enough that a site that hangs does not hold a city's run for long.
ROUND_TIMEOUT = 300.0


@dataclass
class RunSettings:
    """Everything a federated run needs to know; from ``[tool.flwr.app.config]`` or the CLI.

    ``timeout`` (run config ``round-timeout``, seconds) is how long each phase waits for the sites'
    replies, and for ``min-sites`` of them to be connected, before it goes on with those that answered
    (or fails naming the others). A SuperNode that died is answered for sooner: Flower's SuperLink
    replies with an error once the node misses two heartbeats (about a minute). ``personalisation``
    (run config ``personalisation``): whether each site fits and evaluates its personalised model at
    the end; off, the sites skip that step and report the global model only.
    """

    task: TaskSpec
    rounds: int = 20
    encrypt: bool = True
    min_sites: int = 3
    local_epochs: int | None = None
    learning_rate: float | None = None
    proximal_mu: float = 0.0
    seed: int = 0
    timeout: float = ROUND_TIMEOUT
    dp_epsilon: float | None = None
    dp_delta: float = 1e-3
    dp_max_grad_norm: float = 1.0
    packed: bool = True  # model updates packed (federation.packing) when the key holder offers a packed context
    personalisation: bool = True

    @classmethod
    def from_run_config(cls, run_config: dict) -> RunSettings:
        return cls(
            task=load_task(str(run_config.get("task", "referral_risk"))),
            rounds=int(run_config.get("num-server-rounds", 20)),
            encrypt=bool(run_config.get("encrypt", True)),
            min_sites=int(run_config.get("min-sites", 3)),
            proximal_mu=float(run_config.get("proximal-mu", 0.0)),
            packed=bool(run_config.get("packed", True)),
            timeout=_positive("round-timeout", run_config.get("round-timeout", ROUND_TIMEOUT)),
            personalisation=bool(run_config.get("personalisation", True)),
        )


def _positive(key: str, value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"run config {key} = {value!r} is not a number of seconds") from exc
    if not seconds > 0:
        raise SettingsError(f"run config {key} = {value!r}: a number of seconds above 0 is needed")
    return seconds


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
    # Each site's report with its statistics reply (node_agent.site_report: bucketed rows, budget, ...),
    # and when each site last replied (ISO time, stamped by the coordinator at the end of a phase).
    site_reports: dict[str, dict[str, float]] = field(default_factory=dict)
    last_seen: dict[str, str] = field(default_factory=dict)
    # Each site's ROC and reliability counts of the global model, as its egress guard released them
    # (federation.curves; binary tasks, sites with enough held-out patients of each class).
    site_curves: dict[str, dict[str, float]] = field(default_factory=dict)
