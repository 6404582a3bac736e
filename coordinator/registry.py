"""The model registry: every federated run is an MLflow run, its global model a registered version.

Artifacts live with the registry, not in the working folder: a database-backed store (the default
sqlite file in ``FENJI_HOME``) gets its experiments created with an absolute artifact location
(``artifacts/`` beside the sqlite file), so a node or a later command finds the bundles from any
folder. MLflow's own default for such stores is ``./mlruns`` of whatever folder a command runs in.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from coordinator.audit import AuditLog
from coordinator.errors import RegistryError
from coordinator.model_card import CARD_FILES, build_model_cards
from coordinator.outcome import FederationOutcome
from coordinator.settings import load_coordinator_settings
from models.bundle import write_bundle
from models.errors import first_line
from models.nets import build_model, set_flat
from models.policy import TierPolicy

__all__ = ["CURVES_ARTIFACT", "RegisteredModel", "artifact_root_for", "model_name", "promote", "register_outcome"]

CURVES_ARTIFACT = "site_curves.json"  # each site's released ROC and reliability counts (federation.curves)
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


@dataclass
class RegisteredModel:
    name: str
    version: str
    run_id: str
    tracking_uri: str


def model_name(task: str) -> str:
    return f"fenji-{task}"


def artifact_root_for(tracking_uri: str) -> str | None:
    """Where a new experiment in ``tracking_uri`` keeps its artifacts, as a ``file://`` URI.

    Beside the sqlite file for a sqlite store (``FENJI_HOME/artifacts`` for the default one),
    ``FENJI_HOME/artifacts`` for another database; ``None`` for a file store or a tracking server,
    which place artifacts themselves.
    """
    scheme = tracking_uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in _DATABASE_SCHEMES:
        return None
    db_path = tracking_uri[len("sqlite:///"):] if tracking_uri.startswith("sqlite:///") else ""
    if scheme == "sqlite" and db_path and db_path != ":memory:":
        return (Path(db_path).resolve().parent / "artifacts").as_uri()
    return load_coordinator_settings().artifact_root.as_uri()


def _use_experiment(client: object, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created with ``artifact_location`` if it does not exist yet."""
    import mlflow

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except mlflow.exceptions.MlflowException:
            experiment = client.get_experiment_by_name(name)  # another process created it meanwhile
            if experiment is None:
                raise
    return experiment.experiment_id


def register_outcome(
    outcome: FederationOutcome,
    *,
    tracking_uri: str,
    extra_params: dict[str, object] | None = None,
    sites: dict[str, dict] | None = None,
    policy: TierPolicy | None = None,
    artifact_location: str | None = None,
) -> RegisteredModel:
    """Log per-round and per-site metrics, the sites' curves, the task spec, encoding, calibration,
    tier policy and model card, and register the model. ``sites`` is the per-site report (``simulation.report``).

    A new experiment keeps its artifacts under ``artifact_location`` (default: ``artifact_root_for``),
    in a folder named after it.
    """
    import mlflow
    import mlflow.pytorch

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    spec = outcome.task
    try:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)  # never a registry some other code set process-wide
        root = artifact_location or artifact_root_for(tracking_uri)
        experiment = f"fenji-{spec.name}"
        experiment_id = _use_experiment(mlflow.MlflowClient(tracking_uri=tracking_uri), experiment,
                                        f"{root.rstrip('/')}/{experiment}" if root else None)
        mlflow.set_experiment(experiment_id=experiment_id)
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
            if outcome.site_curves:  # as the sites released them; read back by coordinator.service.curves
                mlflow.log_dict({"sites": outcome.site_curves}, CURVES_ARTIFACT)
            policy = policy or load_coordinator_settings().policy()
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
            markdowns, card = build_model_cards(outcome, name=model_name(spec.name), version=version, sites=sites,
                                                policy=policy, extra=extra_params)
            for lang, markdown in markdowns.items():
                mlflow.log_text(markdown, CARD_FILES[lang])
            mlflow.log_dict(card, "model_card.json")
            client.update_model_version(model_name(spec.name), version, description=markdowns["en"])
            return RegisteredModel(model_name(spec.name), version, run.info.run_id, tracking_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise RegistryError(f"MLflow refused the run: {exc}") from exc


def promote(task: str, version: str, *, tracking_uri: str, alias: str = "production",
            audit: AuditLog | None = None, actor: str = "") -> str:
    """Point ``alias`` of ``fenji-<task>`` at ``version``, a governance decision; return the version's
    bundle digest, which nodes verify before serving it.

    With ``audit``, the decision (by ``actor``) is appended to the audit log *before* the alias moves,
    and a ``promotion-failed`` entry follows if moving it fails: no promotion takes effect unaudited,
    and a log that cannot be appended to stops the promotion.

    Raises
    ------
    RegistryError
        If the version does not exist or the registry refuses.
    AuditTamperedError
        If the audit log cannot be appended to (the alias is not moved then).
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, version = model_name(task), str(version)
    try:
        mv = client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as exc:
        raise RegistryError(_missing_version(client, name, version, tracking_uri, exc)) from exc
    digest = mv.tags.get("bundle-sha256", "")
    details = {"task": task, "model": name, "version": version, "alias": alias}
    decision = audit.append(actor=actor, action="promotion", **details, bundle_sha256=digest) if audit else None
    try:
        client.set_registered_model_alias(name, alias, version)
    except Exception as exc:
        if audit and decision:
            audit.append(actor=actor, action="promotion-failed", **details, decision_seq=decision["seq"],
                         error=first_line(exc))
        raise RegistryError(f"cannot promote {name} version {version}: {exc}") from exc
    return digest


def _missing_version(client: object, name: str, version: str, tracking_uri: str, exc: Exception) -> str:
    import mlflow

    if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
        return f"cannot read {name} version {version} from {tracking_uri}: {exc}"
    try:
        known = sorted((str(v.version) for v in client.search_model_versions(f"name = '{name}'")), key=int)
    except mlflow.exceptions.MlflowException:
        known = []
    if known:
        return f"{name} has no version {version} in {tracking_uri} (its versions: {', '.join(known)})"
    return (f"no model {name} is registered in {tracking_uri}: train it first (`fenji sim` or `fenji demo`) "
            "with the same FENJI_HOME / FENJI_MLFLOW_URI")
