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


def test_a_clinic_serves_the_text_model_in_the_referral_slot_personalised_and_offline(tmp_path):
    """`fenji node use-model referral_risk_text`: the referral slot serves the registered text model,
    fetched, verified and cached under its own name, personalised on the clinic's text rows, served
    by `apply_personalisation` (the answer names it), and loaded again offline; then back."""
    import mlflow
    from typer.testing import CliRunner

    from fenji.cli import app as fenji_app
    from models.errors import TaskSpecError
    from models.spec import load_task
    from node_agent.budget import node_audit
    from node_agent.distribution import serve_task, served_tasks
    from node_agent.ingest import ingest_file
    from node_agent.mapping import load_mapping
    from node_agent.personalised import apply_personalisation, personalised_info
    from node_agent.store import SiteStore
    from simulation.synth import ClinicProfile, write_federation
    from tests.node_agent.serve.trained_advisor import trained_text_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment("fenji-test", artifact_location=(tmp_path / "artifacts").as_uri())
    _register(client, experiment_id, tmp_path, {**_models(), "referral_risk_text": trained_text_model(
        "referral_risk_text")}, "1")
    (name, export, mapping), = write_federation(tmp_path / "exports", seed=21, bad_rows=False, clinics=[
        ClinicProfile("clinic_text", 600, label_offset=1.2, severity_shift=0.4)])
    site = tmp_path / "sites" / name
    with SiteStore(site) as store:
        ingest_file(store, load_task("referral_risk_text"), export, load_mapping(mapping))

    assert served_tasks(site) == {"triage": "triage", "diagnosis": "diagnosis", "referral_risk": "referral_risk"}
    with pytest.raises(TaskSpecError, match="none of the slots"):
        serve_task(site, "heart_disease")  # its label is no slot's
    runner = CliRunner()
    used = runner.invoke(fenji_app, ["node", "use-model", "referral_risk_text", "--site-dir", str(site)])
    assert used.exit_code == 0, used.output
    assert served_tasks(site)["referral_risk"] == "referral_risk_text"

    dist = ModelDistribution(site, uri)
    advisor = dist.fetch()
    assert advisor.models["referral_risk"].name == "fenji-referral_risk_text"
    assert "complaint_text" in advisor.tasks["referral_risk"].spec.feature_names
    assert dist.current()["referral_risk"] | {"digest": ""} == {"task": "referral_risk_text", "version": "1",
                                                                 "digest": ""}
    assert (site / "models" / "referral_risk_text" / "1" / "bundle").is_dir()
    assert "referral_risk: referral_risk_text v1" in dist.status
    with pytest.raises(RegistryError, match="told to expect"):
        dist.fetch(expected_digests={"referral_risk_text": "0" * 64})

    personalised = runner.invoke(fenji_app, ["node", "personalise", "--site-dir", str(site), "--task", "referral_risk"])
    assert personalised.exit_code == 0, personalised.output
    info = personalised_info(site, "referral_risk")
    assert info.task == "referral_risk_text" and info.method != "global"
    served, notes = apply_personalisation(site, ModelDistribution(site, None).last_good())  # offline, from disk
    ref = served.models["referral_risk"]
    assert (ref.name, ref.personalised, ref.base_version) == ("fenji-referral_risk_text", True, "1")
    assert notes["referral_risk"].endswith("of referral_risk_text")
    answer = served.assess([{"age": 70, "sex": "M", "complaint": "dyspnoea", "complaint_text": "胸闷气促两天"}])[0]
    assert answer.models["referral_risk"].name == "fenji-referral_risk_text" and answer.referral_risk.personalised

    serve_task(site, "referral_risk")  # back to the model without the text
    advisor = dist.fetch()
    assert advisor.models["referral_risk"].name == "fenji-referral_risk" and "task" in dist.current()["referral_risk"]
    served, notes = apply_personalisation(site, advisor)
    assert not served.models["referral_risk"].personalised and "made from referral_risk_text" in notes["referral_risk"]
    reloads = [e["details"] for e in node_audit(site).entries() if e["action"] == "model-reload"]
    assert reloads[0]["tasks"]["referral_risk"] == "referral_risk_text" and "tasks" not in reloads[-1]
