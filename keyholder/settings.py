"""The key holder's settings, read from the environment in one place."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from federation.settings import read_settings

__all__ = ["KeyHolderSettings", "load_keyholder_settings"]


class KeyHolderSettings(BaseSettings):
    """``FENJI_MIN_SITES``: the fewest sites a decrypted sum may cover."""

    model_config = SettingsConfigDict(env_prefix="FENJI_", extra="ignore")

    min_sites: int = Field(3, ge=1)


def load_keyholder_settings(**overrides: object) -> KeyHolderSettings:
    return read_settings(KeyHolderSettings, **overrides)
