"""The coordinator's settings, read from the environment in one place."""

from __future__ import annotations

from pathlib import Path

from federation.settings import RegistryLocation, read_settings
from models.policy import TierPolicy, load_policy

__all__ = ["CoordinatorSettings", "load_coordinator_settings"]


class CoordinatorSettings(RegistryLocation):
    """``FENJI_HOME``, ``FENJI_MLFLOW_URI`` (see ``RegistryLocation``), ``FENJI_TIER_POLICY`` (the
    commission's tier thresholds: a policy file or built-in name, logged with every model version),
    and where the key holder's API is: ``FENJI_KEYHOLDER_URL`` with the coordinator's bearer token
    ``FENJI_KEYHOLDER_TOKEN`` (from `fenji keyholder token issue`).

    The coordinator service (``fenji coordinator serve``) keeps its accounts, approvals and audit
    chain in ``FENJI_COORDINATOR_DB`` (an SQLAlchemy URL, e.g. ``postgresql+psycopg://…``), by
    default an SQLite file under ``FENJI_HOME/coordinator``; it countersigns its audit head with the
    key holder at ``FENJI_KEYHOLDER_URL`` after every change."""

    tier_policy: str | None = None
    keyholder_url: str | None = None
    keyholder_token: str | None = None
    # The key holder's fingerprint (`fenji keyholder show`), pinned: an audit checked against another
    # key holder's signatures (a URL pointed elsewhere) fails.
    keyholder_id: str | None = None
    coordinator_db: str | None = None

    @property
    def service_home(self) -> Path:
        """The coordinator service's own folder (its SQLite database by default)."""
        return (self.home / "coordinator").resolve()

    @property
    def runs_service(self) -> bool:
        """Whether this coordinator runs the governance service (its database is set or exists)."""
        return bool(self.coordinator_db) or (self.service_home / "coordinator.db").exists()

    @property
    def database_url(self) -> str:
        """``FENJI_COORDINATOR_DB``, else ``sqlite:///FENJI_HOME/coordinator/coordinator.db``."""
        return self.coordinator_db or f"sqlite:///{self.service_home / 'coordinator.db'}"

    @property
    def audit_path(self) -> Path:
        return self.home / "audit.jsonl"

    def policy(self) -> TierPolicy:
        """The tier policy in force: ``FENJI_TIER_POLICY``'s file or built-in name, else the default."""
        return load_policy(self.tier_policy)


def load_coordinator_settings(**overrides: object) -> CoordinatorSettings:
    return read_settings(CoordinatorSettings, **overrides)
