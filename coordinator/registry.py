"""The model registry: every federated run is an MLflow run, its global model a registered version."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import tempfile
from pathlib import Path

import numpy as np
import yaml

from coordinator.server_app import FederationOutcome
from coordinator.model_card import build_model_card
from models.bundle import write_bundle
from models.errors import RegistryError
from models.policy import TierPolicy, load_policy
from models.nets import build_model, set_flat

__all__ = ["RegisteredModel", "promote", "register_outcome"]


@dataclass
class RegisteredModel:
    name: str
    version: str
    run_id: str
    tracking_uri: str


def model_name(task: str) -> str:
    return f"fenji-{task}"


def register_outcome(
    outcome: FederationOutcome,
    *,
    tracking_uri: str,
    extra_params: dict[str, object] | None = None,
    sites: dict[str, dict] | None = None,
    policy: TierPolicy | None = None,
) -> RegisteredModel:
    """Log per-round and per-site metrics, the task spec, encoding, calibration, tier policy and
    model card, and register the model. ``sites`` is the per-site report (``federation.report``)."""
    import mlflow
    import mlflow.pytorch

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    spec = outcome.task
    try:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(f"fenji-{spec.name}")
        with mlflow.start_run(run_name=f"federated-{spec.name}") as run:
            mlflow.log_params({
                "task": spec.name, "rounds": len(outcome.rounds), "encrypted": outcome.encrypted,
                "sites": len(outcome.sites), "model-family": spec.model.family, **(extra_params or {}),
            })
            for row in outcome.rounds:
                step = int(row["round"])
                mlflow.log_metrics({k: v for k, v in row.items() if k != "round" and np.isfinite(v)}, step=step)
            for site, metrics in outcome.sites.items():
                mlflow.log_metrics({f"site.{site}.{k}": v for k, v in metrics.items() if np.isfinite(v)})
            mlflow.log_text(spec.to_yaml(), "task.yaml")
            mlflow.log_dict(outcome.encoding.to_dict(), "encoding.json")
            mlflow.log_dict({"sites": outcome.sites, "personalisation": outcome.personalisation},
                            "site_metrics.json")
            mlflow.log_dict(outcome.calibration.to_dict(), "calibration.json")
            policy = policy or load_policy()
            mlflow.log_text(yaml.safe_dump(policy.model_dump(), sort_keys=False), "tier_policy.yaml")
            with tempfile.TemporaryDirectory() as tmp:
                digest = write_bundle(Path(tmp), spec=spec, encoding=outcome.encoding,
                                      calibration=outcome.calibration, policy=policy, flat=outcome.flat)
                mlflow.log_artifacts(tmp, "bundle")
            model = set_flat(build_model(spec, outcome.n_inputs), outcome.flat)
            info = mlflow.pytorch.log_model(
                model, name="model", input_example=np.zeros((1, outcome.n_inputs), dtype=np.float32),
                pip_requirements=["torch"], registered_model_name=model_name(spec.name),
            )
            version = str(info.registered_model_version)
            client = mlflow.MlflowClient()
            client.set_model_version_tag(model_name(spec.name), version, "task", spec.name)
            client.set_model_version_tag(model_name(spec.name), version, "sites", json.dumps(sorted(outcome.sites)))
            client.set_model_version_tag(model_name(spec.name), version, "encrypted", str(outcome.encrypted))
            client.set_model_version_tag(model_name(spec.name), version, "bundle-sha256", digest)
            markdown, card = build_model_card(outcome, name=model_name(spec.name), version=version, sites=sites,
                                              policy=policy, extra=extra_params)
            mlflow.log_text(markdown, "model_card.md")
            mlflow.log_dict(card, "model_card.json")
            client.update_model_version(model_name(spec.name), version, description=markdown)
            return RegisteredModel(model_name(spec.name), version, run.info.run_id, tracking_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise RegistryError(f"MLflow refused the run: {exc}") from exc


def promote(task: str, version: str, *, tracking_uri: str, alias: str = "production") -> str:
    """Point ``alias`` of ``fenji-<task>`` at ``version`` (a governance decision; the caller audits it).
    Returns the version's bundle digest, which nodes verify before serving it."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name = model_name(task)
    try:
        mv = client.get_model_version(name, str(version))
        client.set_registered_model_alias(name, alias, str(version))
    except mlflow.exceptions.MlflowException as exc:
        raise RegistryError(f"cannot promote {name} version {version}: {exc}") from exc
    return mv.tags.get("bundle-sha256", "")
