"""Fenji's settings, read from the environment (prefix ``FENJI_``); the one place that reads it."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["QUIET_ENV", "Settings", "configure_environment"]

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


class Settings(BaseSettings):
    """``FENJI_HOME`` (work folder), ``FENJI_MLFLOW_URI``, ``FENJI_DATA_DIR``, ``FENJI_MIN_SITES``."""

    model_config = SettingsConfigDict(env_prefix="FENJI_")

    home: Path = Path(".fenji")
    mlflow_uri: str | None = None
    data_dir: Path = Path("../shared/data")
    min_sites: int = 3
    tier_policy: str | None = None  # FENJI_TIER_POLICY: a tier policy file or built-in name

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_uri:
            return self.mlflow_uri
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def audit_path(self) -> Path:
        return self.home / "audit.jsonl"
