"""The node agent's settings, read from the environment in one place."""

from __future__ import annotations

from pydantic import Field

from federation.settings import RegistryLocation, read_settings

__all__ = ["NodeSettings", "load_node_settings"]


class NodeSettings(RegistryLocation):
    """Where the registry is (``FENJI_HOME`` / ``FENJI_MLFLOW_URI``, see ``RegistryLocation``) and how
    the clinic's scoring service listens: ``FENJI_SERVE_HOST``, ``_PORT``, ``_MAX_BATCH``,
    ``_BUSY_TIMEOUT``."""

    serve_host: str = Field("127.0.0.1", description="listen here; the clinic's LAN address to reach other desks")
    serve_port: int = Field(8600, ge=1, le=65535)
    serve_max_batch: int = Field(256, ge=1, le=10_000)
    serve_busy_timeout: float = Field(5.0, gt=0, description="seconds a write waits for the site's DuckDB file")


def load_node_settings(**overrides: object) -> NodeSettings:
    return read_settings(NodeSettings, **overrides)
