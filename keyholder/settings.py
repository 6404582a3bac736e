"""The key holder's settings, read from the environment in one place."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from federation.settings import read_settings

__all__ = ["KeyHolderSettings", "load_keyholder_settings"]


class KeyHolderSettings(BaseSettings):
    """``FENJI_MIN_SITES``: the fewest distinct enrolled sites a decrypted sum may cover; it is set
    here, at the key holder, and nowhere else. ``FENJI_KEYHOLDER_HOME``: the key holder's folder
    (keys, enrolments, tokens, ledger); by default ``keyholder`` under ``FENJI_HOME``.
    ``FENJI_MAX_DP_EPSILON``: the weakest differential privacy (largest epsilon, default 1) for which
    the key holder waives its rule against differencing cohorts."""

    model_config = SettingsConfigDict(env_prefix="FENJI_", extra="ignore")

    min_sites: int = Field(3, ge=1)
    max_dp_epsilon: float = Field(1.0, gt=0)
    home: Path = Path(".fenji")
    keyholder_home: Path | None = None

    @property
    def state_dir(self) -> Path:
        return (self.keyholder_home or self.home / "keyholder").resolve()


def load_keyholder_settings(**overrides: object) -> KeyHolderSettings:
    return read_settings(KeyHolderSettings, **overrides)
