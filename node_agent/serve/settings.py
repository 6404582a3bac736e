"""The scoring server's settings, from the environment (prefix ``FENJI_SERVE_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ServeSettings"]


class ServeSettings(BaseSettings):
    """``FENJI_SERVE_HOST``, ``_PORT``, ``_MAX_BATCH``, ``_BUSY_TIMEOUT``."""

    model_config = SettingsConfigDict(env_prefix="FENJI_SERVE_")

    host: str = Field("127.0.0.1", description="listen here; the clinic's LAN address to reach other desks")
    port: int = 8765
    max_batch: int = Field(256, ge=1, le=10_000)
    busy_timeout: float = Field(5.0, gt=0, description="seconds a write waits for the site's DuckDB file")
