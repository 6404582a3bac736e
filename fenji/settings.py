"""The shells' own setting (the parties read theirs: ``node_agent``, ``coordinator``, ``keyholder``)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from federation.settings import read_settings

__all__ = ["ShellSettings", "load_shell_settings"]


class ShellSettings(BaseSettings):
    """``FENJI_DATA_DIR``: the real public data sets (default ``../shared/data``), read in place.
    ``FENJI_SITES_DIR``: the site folders (as ``fenji sim --sites-dir``) that the coordinator's training
    jobs run over on the simulation engine, when ``fenji coordinator serve`` is the embedded demo's.
    ``FENJI_SUPERLINK``: a SuperLink connection of ``$FLWR_HOME/config.toml`` (its address and CA);
    set, the coordinator's jobs run there on the deployment engine, as ``flwr run`` of ``FENJI_FLWR_APP``
    (the Fenji app folder whose bundle the clinics approved; default: this source checkout)."""

    model_config = SettingsConfigDict(env_prefix="FENJI_", extra="ignore")

    data_dir: Path = Path("../shared/data")
    sites_dir: Path | None = None
    superlink: str | None = None
    flwr_app: Path | None = None


def load_shell_settings(**overrides: object) -> ShellSettings:
    return read_settings(ShellSettings, **overrides)
