"""A clinic whose registry is unreachable serves its last good models at once, and says so."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from federation.errors import RegistryError
from models.bundle import write_bundle
from models.policy import load_policy
from node_agent.distribution import ModelDistribution
from tests.node_agent.serve.trained_advisor import _models


class RefusingRegistry:
    """A TCP port on loopback that accepts each connection and drops it at once, counting them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture()
def registry():
    server = RefusingRegistry()
    yield server
    server.close()


def _cache_last_good(site, models) -> dict:
    state = {}
    for task, model in models.items():
        digest = write_bundle(site / "models" / task / "3" / "bundle", spec=model.spec, encoding=model.encoding,
                              calibration=model.calibration, policy=load_policy(), flat=model.flat)
        state[task] = {"version": "3", "digest": digest}
    (site / "models" / "current.json").write_text(json.dumps(state))
    return state


def test_unreachable_registry_falls_back_after_one_attempt_and_says_so(tmp_path, registry):
    site = tmp_path / "clinic"
    _cache_last_good(site, _models())
    dist = ModelDistribution(site, f"http://127.0.0.1:{registry.port}")
    advisor = dist.load()
    # MLflow's defaults retry 7 times with back-off (minutes of silence); the node tries once.
    assert registry.connections == 1
    assert {t: m.version for t, m in advisor.models.items()} == {t: "3" for t in advisor.models}
    assert "not usable" in dist.status and "last good set" in dist.status and "referral_risk v3" in dist.status


def test_unreachable_registry_and_no_cache_is_a_clear_error(tmp_path, registry):
    dist = ModelDistribution(tmp_path / "clinic", f"http://127.0.0.1:{registry.port}")
    with pytest.raises(RegistryError, match="no model has been fetched"):
        dist.load()
    assert registry.connections == 1


def _register(client, experiment_id: str, tmp, models, version: str) -> None:
    """Each task's bundle as a new registered version, marked "production" (as governance would)."""
    for task, model in models.items():
        folder = tmp / f"{task}-{version}"
        digest = write_bundle(folder / "bundle", spec=model.spec, encoding=model.encoding,
                              calibration=model.calibration, policy=load_policy(), flat=model.flat)
        (folder / "model_card.md").write_text(f"# fenji-{task} {version}\n")
        run_id = client.create_run(experiment_id).info.run_id
        client.log_artifacts(run_id, str(folder / "bundle"), "bundle")
        client.log_artifact(run_id, str(folder / "model_card.md"))
        client.set_terminated(run_id)
        if not client.search_registered_models(f"name = 'fenji-{task}'"):
            client.create_registered_model(f"fenji-{task}")
        mv = client.create_model_version(f"fenji-{task}", f"runs:/{run_id}/bundle", run_id=run_id,
                                         tags={"bundle-sha256": digest})
        assert str(mv.version) == version
        client.set_registered_model_alias(f"fenji-{task}", "production", mv.version)


def test_every_model_reload_is_in_the_node_audit_log_with_its_versions(tmp_path):
    import mlflow

    from node_agent.budget import node_audit

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment("fenji-test", artifact_location=(tmp_path / "artifacts").as_uri())
    models = _models()
    _register(client, experiment_id, tmp_path, models, "1")
    site = tmp_path / "clinic"
    dist = ModelDistribution(site, uri)
    dist.fetch()  # what `fenji node serve` does at start
    _register(client, experiment_id, tmp_path, {"triage": models["triage"]}, "2")
    dist.fetch()  # what POST /api/v1/admin/reload calls
    reloads = [e["details"] for e in node_audit(site).entries() if e["action"] == "model-reload"]
    assert [(r["previous"], r["versions"]) for r in reloads] == [
        ({}, {task: "1" for task in models}),
        ({task: "1" for task in models}, {**{task: "1" for task in models}, "triage": "2"})]
    assert reloads[1]["digests"] == {task: entry["digest"] for task, entry in dist.current().items()}
    assert node_audit(site).verify() == 2
