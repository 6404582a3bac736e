"""Fixtures for the coordinator service: a real MLflow registry with versions that carry per-site
metrics, a real key holder service (its own process), and the app on a real uvicorn server."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from coordinator.service import Coordinator, Role, create_app, open_coordinator
from coordinator.service.accounts import add_account, bootstrap_admin
from coordinator.service.chain import anchor_head
from coordinator.settings import load_coordinator_settings
from tests.servers import running  # noqa: F401  (re-exported for the tests here)

TASK = "triage"
# What each version's sites released (version -> site -> metric); version 3 serves one site badly.
SITE_METRICS = {
    "1": {"clinic_a": {"auroc": 0.71, "log-loss": 0.52, "n": 60.0}, "clinic_b": {"auroc": 0.69, "log-loss": 0.55, "n": 45.0}},
    "2": {"clinic_a": {"auroc": 0.80, "log-loss": 0.45, "n": 60.0}, "clinic_b": {"auroc": 0.74, "log-loss": 0.50, "n": 45.0},
          "clinic_c": {"auroc": 0.77, "log-loss": 0.47, "n": 30.0}},
    "3": {"clinic_a": {"auroc": 0.83, "log-loss": 0.40, "n": 60.0}, "clinic_b": {"auroc": 0.61, "log-loss": 0.66, "n": 45.0}},
}
_names = itertools.count()


def make_registry(home: Path) -> str:
    """``fenji-triage`` versions 1-3 in the default registry under ``home``, as ``register_outcome``
    leaves them: a run with ``site.<site>.<metric>`` metrics and a bundle digest tag per version."""
    import mlflow

    uri = load_coordinator_settings(home=home).tracking_uri
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("fenji-triage", artifact_location=(home / "artifacts").as_uri())
    client.create_registered_model("fenji-triage")
    for version, sites in SITE_METRICS.items():
        run = client.create_run(experiment)
        for site, metrics in sites.items():
            for metric, value in metrics.items():
                client.log_metric(run.info.run_id, f"site.{site}.{metric}", value)
        client.set_terminated(run.info.run_id)
        client.create_model_version("fenji-triage", source=(home / "artifacts" / version).as_uri(),
                                    run_id=run.info.run_id, tags={"bundle-sha256": version * 64, "encrypted": "True"})
    return uri


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


@dataclass
class Service:
    coordinator: Coordinator
    base_url: str = ""
    tokens: dict[str, str] = field(default_factory=dict)  # "admin", "commissioner", "commissioner2", "data_scientist"
    env: dict[str, str] = field(default_factory=dict)  # FENJI_* for a command run against this coordinator

    def headers(self, who: str | None) -> dict[str, str]:
        return {} if who is None else {"Authorization": f"Bearer {self.tokens[who]}"}

    def client(self, who: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers(who), timeout=60)

    def alias(self, alias: str = "production") -> str | None:
        return self.coordinator.registry.alias_version(TASK, alias)


@contextmanager
def fresh_key_holder(home: Path):
    """A real key holder service in its own process, over a new folder at ``home``."""
    from keyholder.process import start_key_holder_service
    from keyholder.state import KeyHolderState

    state = KeyHolderState(home)
    state.init()
    with start_key_holder_service(home, min_sites=3) as service:
        service.state = state
        yield service


@pytest.fixture()
def key_holder(tmp_path):
    """A key holder of the test's own: a key holder anchors one city's audit log, under one caller."""
    with fresh_key_holder(tmp_path / "keyholder") as service:
        yield service


@pytest.fixture(scope="session")
def registry_file(tmp_path_factory) -> Path:
    """The registry made once (MLflow's schema migrations take seconds); each test gets a copy."""
    home = tmp_path_factory.mktemp("registry")
    make_registry(home)
    return home / "mlflow.db"


def make_service(home: Path, registry_file: Path, *, key_holder=None, database_url: str | None = None) -> Service:
    """A coordinator over a copy of ``registry_file`` in ``home``, anchored at ``key_holder`` (if given),
    with one account per role plus a second commissioner."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(registry_file, home / "mlflow.db")
    overrides: dict[str, object] = {"home": str(home)}
    if key_holder is not None:
        overrides |= {"keyholder_url": key_holder.url, "keyholder_token": key_holder.state.issue_token(unique("coordinator"))}
    if database_url:
        overrides["coordinator_db"] = database_url
    coordinator = open_coordinator(load_coordinator_settings(**overrides))
    service = Service(coordinator, env={f"FENJI_{key.upper()}": str(value) for key, value in overrides.items()})
    service.tokens["admin"] = bootstrap_admin(coordinator.sessions)
    with coordinator.sessions() as session:
        for who, role in [("commissioner", Role.COMMISSIONER), ("commissioner2", Role.COMMISSIONER),
                          ("data_scientist", Role.DATA_SCIENTIST)]:
            service.tokens[who] = add_account(session, name=f"test {who}", role=role, actor="test")[1]
    anchor_head(coordinator.sessions, coordinator.anchors)
    return service


@pytest.fixture()
def service(tmp_path, key_holder, registry_file) -> Iterator[Service]:
    """A fresh coordinator (database, registry) on a real server, anchored at the shared key holder."""
    service = make_service(tmp_path / "home", registry_file, key_holder=key_holder)
    with running(create_app(service.coordinator)) as service.base_url:
        yield service
