"""Run a federation on Flower's simulation engine: one SuperNode per site folder.

This is where the parties meet in one machine: a key-holder process, the coordinator's ServerApp
(in a thread of this process, holding only the public context) and one ClientApp per site.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from federation.crypto import start_key_holder_process
from federation.settings import configure_environment
from models.encoding import Encoder, SiteStatistics, encode_labels
from models.nets import build_model
from models.spec import TaskSpec
from models.training import TrainConfig, evaluate, train

__all__ = ["pooled_reference", "run_simulated_federation", "site_dirs_of"]


def site_dirs_of(sites_dir: Path) -> list[Path]:
    """Site folders (those holding a ``site.duckdb``) under ``sites_dir``, sorted by name."""
    return sorted(p for p in Path(sites_dir).iterdir() if (p / "site.duckdb").exists())


def run_simulated_federation(
    spec: TaskSpec,
    site_dirs: Sequence[Path],
    *,
    rounds: int = 20,
    encrypt: bool = True,
    min_sites: int = 3,
    local_epochs: int | None = None,
    learning_rate: float | None = None,
    proximal_mu: float = 0.0,
    seed: int = 0,
    dp_epsilon: float | None = None,
    dp_delta: float = 1e-3,
    egress_log: Path | None = None,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    verbose: bool = False,
):
    """Run statistics + ``rounds`` rounds of (encrypted) FedAvg over the site folders."""
    configure_environment()
    from flwr.simulation import run_simulation

    from coordinator.server_app import FederationOutcome, RunSettings, build_server_app
    from node_agent.client_app import build_client_app

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    settings = RunSettings(
        task=spec, rounds=rounds, encrypt=encrypt, min_sites=min_sites, local_epochs=local_epochs,
        learning_rate=learning_rate, proximal_mu=proximal_mu, seed=seed, dp_epsilon=dp_epsilon, dp_delta=dp_delta,
    )
    outcomes: list[FederationOutcome] = []
    manager, key_holder = start_key_holder_process(min_sites=min_sites)
    try:
        server_app = build_server_app(settings, key_holder, n_sites=len(site_dirs), on_round=on_round,
                                      on_done=outcomes.append)
        client_app = build_client_app([Path(p).resolve() for p in site_dirs], egress_log=egress_log,
                                      allow_plaintext=not encrypt)
        run_simulation(
            server_app=server_app, client_app=client_app, num_supernodes=len(site_dirs),
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": 2, "include_dashboard": False, "configure_logging": False},
            },
            verbose_logging=verbose,
        )
    finally:
        manager.shutdown()
    if not outcomes:
        raise RuntimeError("the federated run ended without a result; run with --verbose for Flower's log")
    return outcomes[0]


def pooled_reference(
    spec: TaskSpec, site_dirs: Sequence[Path], *, epochs: int, config: TrainConfig | None = None
) -> dict[str, dict[str, float]]:
    """Centralised training on all sites' training rows, evaluated on each site's test split.

    A *reference* that only a simulation can compute: it reads every site's rows in one place.
    """
    from node_agent.local import load_site_data

    data = [load_site_data(Path(p), spec) for p in site_dirs]
    import pandas as pd

    pooled = pd.concat([d.train_frame for d in data], ignore_index=True)
    params = SiteStatistics.from_frame(spec, pooled).encoding_params()
    encoder = Encoder(spec, params)
    x, y = encoder.transform(pooled), encode_labels(spec, pooled)
    model = build_model(spec, x.shape[1])
    cfg = config or TrainConfig.from_spec(spec)
    cfg.epochs = epochs
    train(model, spec, x, y, cfg)
    return {
        d.site_id: evaluate(model, spec, encoder.transform(d.test_frame), encode_labels(spec, d.test_frame))
        for d in data
    }
