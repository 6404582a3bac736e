"""Registered model versions as a commissioner compares them: per-site metrics (only what the sites
released: the ``site.<site>.<metric>`` metrics ``coordinator.registry`` logged from their replies)
and, per metric, the gap between the best and the worst site."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from pydantic import BaseModel, Field

from coordinator.model_card import CARD_FILES
from coordinator.registry import model_name
from coordinator.service.errors import NotFound
from federation.errors import RegistryError

__all__ = ["LOWER_IS_BETTER", "Gap", "ModelRegistry", "RoundMetrics", "RoundPoint", "VersionView", "site_gaps"]

LOWER_IS_BETTER = {"log-loss", "ece", "brier", "mae"}
_NOT_QUALITY = {"n", "n-eval", "rows"}  # counts, not how good a model is


class Gap(BaseModel):
    best_site: str
    best: float
    worst_site: str
    worst: float
    gap: float = Field(description="|best - worst|: how unevenly the model serves the sites")


class VersionView(BaseModel):
    task: str
    version: str
    run_id: str
    created_at: int = Field(description="milliseconds since the epoch (MLflow)")
    aliases: list[str]
    bundle_sha256: str
    encrypted: bool
    sites: dict[str, dict[str, float]] = Field(description="metric per site, as the site released it")
    gaps: dict[str, Gap] = Field(description="per metric, the best and the worst site")
    derived_from: str | None = Field(None, description="the version this one was derived from (same parameters)")
    change: str | None = Field(None, description="what the derivation changed: 'tier-policy'")


class RoundPoint(BaseModel):
    round: int
    value: float


class RoundMetrics(BaseModel):
    task: str
    version: str
    rounds: dict[str, list[RoundPoint]] = Field(description="per metric, the federated model's value after each "
                                                            "round (what the training run logged per round)")


def site_gaps(sites: dict[str, dict[str, float]]) -> dict[str, Gap]:
    """Per quality metric reported by at least two sites: the best and the worst site, and the gap."""
    gaps: dict[str, Gap] = {}
    for metric in sorted({m for values in sites.values() for m in values} - _NOT_QUALITY):
        scores = {s: v[metric] for s, v in sites.items() if metric in v and math.isfinite(v[metric])}
        if len(scores) < 2:
            continue
        ranked = sorted(scores, key=scores.get, reverse=metric not in LOWER_IS_BETTER)
        best, worst = ranked[0], ranked[-1]
        gaps[metric] = Gap(best_site=best, best=scores[best], worst_site=worst, worst=scores[worst],
                           gap=abs(scores[best] - scores[worst]))
    return gaps


class ModelRegistry:
    """Read-only views of the MLflow registry at ``tracking_uri`` (the alias is moved by governance)."""

    def __init__(self, tracking_uri: str) -> None:
        import mlflow

        logging.getLogger("mlflow").setLevel(logging.ERROR)
        self.tracking_uri = tracking_uri
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def tasks(self) -> list[str]:
        import mlflow

        try:
            models = self.client.search_registered_models()
        except mlflow.exceptions.MlflowException as exc:
            raise RegistryError(f"cannot list the registry's models: {exc}") from exc
        return sorted(m.name.removeprefix("fenji-") for m in models if m.name.startswith("fenji-"))

    def versions(self, task: str) -> list[VersionView]:
        """Every version of ``task``'s model, newest first ([] for an unknown task)."""
        import mlflow

        try:
            found = self.client.search_model_versions(f"name = '{model_name(task)}'")
            # The search leaves each version's aliases empty; the registered model has them all.
            aliases = self.client.get_registered_model(model_name(task)).aliases if found else {}
            return sorted((self._view(task, mv, aliases) for mv in found), key=lambda v: -int(v.version))
        except mlflow.exceptions.MlflowException as exc:
            raise RegistryError(f"cannot read {model_name(task)}'s versions: {exc}") from exc

    def version(self, task: str, version: str) -> VersionView | None:
        return next((v for v in self.versions(task) if v.version == str(version)), None)

    def existing(self, task: str, version: str) -> VersionView:
        """The version, or ``NotFound`` (404) naming it."""
        view = self.version(task, version)
        if view is None:
            raise NotFound(f"{model_name(task)} has no version {version}")
        return view

    def rounds(self, task: str, version: str) -> RoundMetrics | None:
        """The metrics the version's training run logged per round (not the sites'); ``None`` for an
        unknown version."""
        import mlflow

        try:
            mv = self.client.get_model_version(model_name(task), str(version))
        except mlflow.exceptions.MlflowException:
            return None
        rounds: dict[str, list[RoundPoint]] = {}
        try:
            keys = self.client.get_run(mv.run_id).data.metrics if mv.run_id else {}
            for key in sorted(k for k in keys if not k.startswith("site.")):
                history = self.client.get_metric_history(mv.run_id, key)
                points = {m.step: m.value for m in history if m.step > 0 and math.isfinite(m.value)}
                if points:
                    rounds[key] = [RoundPoint(round=step, value=points[step]) for step in sorted(points)]
        except mlflow.exceptions.MlflowException as exc:
            raise RegistryError(f"cannot read the rounds of {model_name(task)} version {version}: {exc}") from exc
        return RoundMetrics(task=task, version=str(mv.version), rounds=rounds)

    def card(self, task: str, version: str, lang: str = "en") -> tuple[str, str]:
        """The version's model card (markdown) in ``lang`` (``coordinator.model_card.CARD_LANGS``) and the
        language it is in: its run's card in ``lang``; else (a version registered before the Chinese card
        existed) its English ``model_card.md``; else the version's description, in English.

        Raises
        ------
        NotFound
            If there is no such version, or it carries no card.
        """
        import tempfile

        import mlflow

        view = self.existing(task, version)
        try:
            files = {a.path for a in self.client.list_artifacts(view.run_id)} if view.run_id else set()
            for shown in dict.fromkeys((lang, "en")):
                if CARD_FILES[shown] in files:
                    with tempfile.TemporaryDirectory() as folder:
                        path = self.client.download_artifacts(view.run_id, CARD_FILES[shown], folder)
                        return Path(path).read_text(encoding="utf-8"), shown
            description = self.client.get_model_version(model_name(task), str(version)).description
        except (mlflow.exceptions.MlflowException, OSError, UnicodeDecodeError) as exc:
            raise RegistryError(f"cannot read the model card of {model_name(task)} version {version}: {exc}") from exc
        if not description:
            raise NotFound(f"{model_name(task)} version {version} carries no model card")
        return description, "en"

    def alias_version(self, task: str, alias: str) -> str | None:
        """The version ``alias`` points at, ``None`` if it points nowhere."""
        import mlflow

        try:
            return str(self.client.get_model_version_by_alias(model_name(task), alias).version)
        except mlflow.exceptions.MlflowException:
            return None

    def _view(self, task: str, mv: object, aliases: dict[str, str | int]) -> VersionView:
        sites: dict[str, dict[str, float]] = {}
        if mv.run_id:
            for key, value in self.client.get_run(mv.run_id).data.metrics.items():
                if key.startswith("site."):
                    site, _, metric = key.removeprefix("site.").rpartition(".")
                    if site and metric:
                        sites.setdefault(site, {})[metric] = float(value)
        return VersionView(task=task, version=str(mv.version), run_id=mv.run_id or "",
                           created_at=int(mv.creation_timestamp or 0), aliases=sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
                           bundle_sha256=mv.tags.get("bundle-sha256", ""),
                           encrypted=mv.tags.get("encrypted", "") == "True", sites=sites, gaps=site_gaps(sites),
                           derived_from=mv.tags.get("derived-from"), change=mv.tags.get("change"))
