"""What every party's settings share: the quiet environment, one way to read a ``BaseSettings`` with
errors that name the variable, and where the model registry lives (both the coordinator, which
writes it, and the nodes, which read it, need that). Each party reads its own settings class in one
place: ``node_agent.settings``, ``coordinator.settings``, ``keyholder.settings``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from federation.errors import RegistryError, SettingsError

__all__ = ["QUIET_ENV", "RegistryLocation", "SettingsError", "configure_environment", "environment", "read_settings"]

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


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` set in ``os.environ`` within this block; the caller's own values come back after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def configure_environment() -> None:
    """Set the quiet defaults above (a value the user set already wins)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


class RegistryLocation(BaseSettings):
    """``FENJI_HOME`` (the coordinator's folder) and ``FENJI_MLFLOW_URI`` (another MLflow store).

    ``FENJI_HOME`` is the coordinator's one place: the registry (``mlflow.db``), the registry's
    artifacts (``artifacts/``) and the audit log (``audit.jsonl``). Every command uses it, the demo
    included, so what one command registers the next one finds.
    """

    model_config = SettingsConfigDict(env_prefix="FENJI_", extra="ignore")

    home: Path = Path(".fenji")
    mlflow_uri: str | None = None

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

    def existing_tracking_uri(self, *, must_exist: bool) -> str | None:
        """The registry's URI if it exists already (nothing is created); ``None`` if the default store
        is not there yet, or ``RegistryError`` when ``must_exist``."""
        file = self.registry_file
        if file is not None and not file.is_file():
            if must_exist:
                raise RegistryError(f"no model registry at {file} (FENJI_HOME={self.home}): train and register a "
                                    "model first (`fenji demo` or `fenji sim`), or set FENJI_HOME to the coordinator's folder")
            return None
        return self.tracking_uri

    @property
    def artifact_root(self) -> Path:
        """Where new experiments keep their artifacts when the store is a database (MLflow would
        otherwise use ``./mlruns`` of whatever folder a command happens to run in)."""
        return (self.home / "artifacts").resolve()


S = TypeVar("S", bound=BaseSettings)


def read_settings(cls: type[S], **overrides: object) -> S:
    """``cls()``, with a bad ``FENJI_*`` value reported as a ``SettingsError`` naming the variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        problems = "; ".join(f"{prefix}{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"invalid setting {problems}") from exc
