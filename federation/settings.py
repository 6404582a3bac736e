"""Fenji's settings, read from the environment (prefix ``FENJI_``); the one place that reads it."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.errors import FenjiError

__all__ = ["QUIET_ENV", "Settings", "SettingsError", "configure_environment", "load_settings"]

# Everything Fenji starts runs without telemetry, update checks, or runtime dependency installs
# (Flower's `uv sync` could swap the CPU build of torch for a CUDA one).
QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def configure_environment() -> None:
    """Set the quiet defaults above (a value the user set already wins)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


class SettingsError(FenjiError):
    """An environment variable ``FENJI_*`` holds a value Fenji cannot use."""


class Settings(BaseSettings):
    """``FENJI_HOME`` (work folder), ``FENJI_MLFLOW_URI``, ``FENJI_DATA_DIR``, ``FENJI_MIN_SITES``.

    ``FENJI_HOME`` is the coordinator's one place: the registry (``mlflow.db``), the registry's
    artifacts (``artifacts/``) and the audit log (``audit.jsonl``). Every command uses it, the demo
    included, so what one command registers the next one finds.
    """

    model_config = SettingsConfigDict(env_prefix="FENJI_")

    home: Path = Path(".fenji")
    mlflow_uri: str | None = None
    data_dir: Path = Path("../shared/data")
    min_sites: int = 3
    tier_policy: str | None = None  # FENJI_TIER_POLICY: a tier policy file or built-in name

    @property
    def registry_file(self) -> Path | None:
        """The default registry's sqlite file (``None`` when ``FENJI_MLFLOW_URI`` names another store)."""
        return None if self.mlflow_uri else (self.home / "mlflow.db").resolve()

    @property
    def tracking_uri(self) -> str:
        """The registry's MLflow URI; creates ``FENJI_HOME`` for the default sqlite store."""
        if self.mlflow_uri:
            return self.mlflow_uri
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.registry_file}"

    @property
    def artifact_root(self) -> Path:
        """Where new experiments keep their artifacts when the store is a database (MLflow would
        otherwise use ``./mlruns`` of whatever folder a command happens to run in)."""
        return (self.home / "artifacts").resolve()

    @property
    def audit_path(self) -> Path:
        return self.home / "audit.jsonl"


def load_settings(**overrides: object) -> Settings:
    """``Settings()``, with a bad ``FENJI_*`` value reported as a ``SettingsError`` naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"FENJI_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"invalid setting {problems}") from exc
