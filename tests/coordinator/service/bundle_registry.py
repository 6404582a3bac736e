"""Registries a clinic's node can serve from: real bundles of the three models, registered as
``coordinator.registry`` leaves them (a run with the bundle, the model card and the sites' metrics;
the version tagged with its bundle digest)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

from coordinator.settings import load_coordinator_settings
from models.advisor import TASKS, TaskModel
from models.policy import TierPolicy, load_policy


@functools.lru_cache(maxsize=1)
def untrained_models() -> dict[str, TaskModel]:
    """The three models with real encodings and initial weights (no training: milliseconds), for
    tests about which version a node serves, not about what it predicts."""
    import numpy as np
    import torch

    from models.calibration import Calibration
    from models.encoding import Encoder, SiteStatistics
    from models.nets import build_model, get_flat
    from models.spec import load_task
    from simulation.synth import ClinicProfile, generate_clinic

    torch.manual_seed(0)
    frame = generate_clinic(ClinicProfile("bundle_clinic", 120), np.random.default_rng(0))
    models = {}
    for task in TASKS:
        spec = load_task(task)
        params = SiteStatistics.from_frame(spec, frame).encoding_params()
        models[task] = TaskModel(spec, params, get_flat(build_model(spec, Encoder(spec, params).width)), Calibration())
    return models


def released_curves(n: int, rate: float, seed: int) -> dict[str, float]:
    """The curves (``federation.curves``) a site of ``n`` held-out rows releases at min n 10 for a model
    that ranks its patients fairly well."""
    import numpy as np

    from federation.curves import release_curves

    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(int)
    return release_curves(rng.beta(2 + 1.5 * y, 5 - 1.5 * y), y, min_n=10, rounding=5)  # AUROC about 0.75


def add_version(client, experiment_id: str, home: Path, task: str, model: TaskModel, *,
                sites: Mapping[str, Mapping[str, float]] | None = None, rounds: list[float] | None = None,
                policy: TierPolicy | None = None, curves: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """Register ``model`` as a new version of ``fenji-<task>``; return the version. ``curves``: what
    each site released (``federation.curves``), logged as ``register_outcome`` logs it."""
    from models.bundle import write_bundle

    run_id = client.create_run(experiment_id).info.run_id
    folder = home / "bundles" / run_id
    digest = write_bundle(folder / "bundle", spec=model.spec, encoding=model.encoding, calibration=model.calibration,
                          policy=policy or load_policy(), flat=model.flat)
    (folder / "model_card.md").write_text(f"# Model card: fenji-{task}\n\n## Known limits\n- a test's model\n")
    client.log_artifacts(run_id, str(folder / "bundle"), "bundle")
    client.log_artifact(run_id, str(folder / "model_card.md"))
    for site, metrics in (sites or {}).items():
        for metric, value in metrics.items():
            client.log_metric(run_id, f"site.{site}.{metric}", value)
    for step, value in enumerate(rounds or [], start=1):
        client.log_metric(run_id, "auroc", value, step=step)
    if curves:
        from coordinator.registry import CURVES_ARTIFACT

        client.log_dict(run_id, {"sites": dict(curves)}, CURVES_ARTIFACT)
    client.set_terminated(run_id)
    return str(client.create_model_version(f"fenji-{task}", f"runs:/{run_id}/bundle", run_id=run_id,
                                           tags={"bundle-sha256": digest, "encrypted": "True"}).version)


def make_bundle_registry(home: Path, models: Mapping[str, TaskModel], versions: Mapping[str, Mapping[str, dict]],
                         *, production: Mapping[str, str], rounds: Mapping[str, list[float]] | None = None,
                         curves: Mapping[str, Mapping[str, dict]] | None = None) -> Path:
    """The default registry under ``home`` with ``versions[task][version] = {site: metrics}`` of each
    task (versions numbered from 1, in order), ``rounds[version]`` an AUROC per round,
    ``curves[task][version] = {site: released curves}``, and the ``production`` alias of some tasks
    set directly (as before the service ran)."""
    import mlflow

    uri = load_coordinator_settings(home=home).tracking_uri
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("fenji-console", artifact_location=(home / "artifacts").as_uri())
    for task, model in models.items():
        client.create_registered_model(f"fenji-{task}")
        for version, sites in versions.get(task, {"1": {}}).items():
            made = add_version(client, experiment, home, task, model, sites=sites, rounds=(rounds or {}).get(version),
                               curves=(curves or {}).get(task, {}).get(version))
            assert made == version, (task, made, version)
    for task, version in production.items():
        client.set_registered_model_alias(f"fenji-{task}", "production", version)
    return home / "mlflow.db"
