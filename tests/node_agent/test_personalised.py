"""The clinic's personalised model: saved at the site, versioned with its global version, verified,
served by the clinic's scoring service (the answer says so), and given up for the global model when
production moves on, when it changed on disk, or when the site switches it off."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from bench.serving import train_models
from fenji.cli import app as fenji_app
from models.bundle import bundle_digest, write_bundle
from models.policy import load_policy
from models.spec import load_task
from node_agent.distribution import ModelDistribution
from node_agent.ingest import ingest_file
from node_agent.mapping import load_mapping
from node_agent.personalised import (
    apply_personalisation,
    load_personalised,
    personalised_info,
)
from node_agent.serve import AdvisorHolder, Role, TokenStore, create_app
from node_agent.store import SiteStore
from simulation.synth import ClinicProfile, write_federation

PATIENT = {"age": 71, "sex": "M", "sbp": 150, "dbp": 88, "heart_rate": 104, "resp_rate": 22, "temperature": 37.9,
           "spo2": 93, "avpu": "A", "pain_score": 5, "complaint": "dyspnoea", "arrival": "walk_in",
           "hx_hypertension": True, "hx_diabetes": False, "hx_copd": True, "hx_heart_disease": False}


def cache_version(site, version: str, models) -> None:
    """Put a global version into the node's model cache as `fenji node serve` leaves it, as production."""
    state_file = site / "models" / "current.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    for task, m in models.items():
        folder = site / "models" / task / version
        digest = write_bundle(folder / "bundle", spec=m.spec, encoding=m.encoding, calibration=m.calibration,
                              policy=load_policy("default"), flat=m.flat)
        (folder / "model_card.md").write_text(f"# fenji-{task} version {version}\n")
        (folder / "model_card.zh-CN.md").write_text(f"# 模型说明：fenji-{task} 第 {version} 版\n", encoding="utf-8")
        state[task] = {"version": version, "digest": digest}
    state_file.write_text(json.dumps(state))


@pytest.fixture(scope="module")
def personalised_site(tmp_path_factory):
    """A clinic whose referrals run well above the global model's (so adapting to it pays), with
    global version 3 in production and a personalised referral-risk model made by the CLI."""
    root = tmp_path_factory.mktemp("personalised")
    profile = ClinicProfile("clinic_p", 700, label_offset=1.2, severity_shift=0.4)
    (name, path, mapping), = write_federation(root / "exports", clinics=[profile], seed=21, bad_rows=False)
    site = root / "sites" / name
    with SiteStore(site) as store:
        ingest_file(store, load_task("referral_risk"), path, load_mapping(mapping))
    cache_version(site, "3", train_models(rows=900, seed=5))
    result = CliRunner().invoke(fenji_app, ["node", "personalise", "--site-dir", str(site), "--task", "referral_risk"])
    assert result.exit_code == 0, result.output
    return site


@pytest.fixture()
def site(personalised_site, tmp_path):
    copy = tmp_path / personalised_site.name
    shutil.copytree(personalised_site, copy)
    return copy


def doctor_client(site, **kwargs) -> TestClient:
    tokens = TokenStore.for_site(site)
    client = TestClient(create_app(AdvisorHolder(ModelDistribution(site, None).last_good()), site_dir=site,
                                   tokens=tokens, **kwargs))
    client.headers["Authorization"] = f"Bearer {tokens.create(role=Role.DOCTOR, name='Dr P').token}"
    return client


def test_the_personalised_model_is_saved_with_its_global_version(site):
    info = personalised_info(site, "referral_risk")
    production = json.loads((site / "models" / "current.json").read_text())["referral_risk"]
    assert (info.base_version, info.base_digest) == ("3", production["digest"])
    assert info.method != "global"  # this clinic's referrals differ: the global model is not its best
    assert info.bundle_sha256 == bundle_digest(site / "personalised" / "referral_risk" / "bundle")
    assert info.rows > 400 and set(info.validation_log_loss) >= {"global", "site-intercepts"}
    assert not (site / "personalised" / "triage").exists()  # only the task asked for


def test_the_clinics_scoring_service_serves_its_personalised_model(site):
    info, personal = load_personalised(site, "referral_risk")
    global_advisor = ModelDistribution(site, None).last_good()
    with doctor_client(site) as client:
        answer = client.post("/api/v1/score", json=PATIENT).json()
        assert answer["models"]["referral_risk"] | {"card_url": None} == {
            "name": "fenji-referral_risk", "version": info.version, "card_url": None, "personalised": True,
            "method": info.method, "base_version": "3"}
        assert answer["referral_risk"]["personalised"] is True
        assert answer["models"]["triage"]["personalised"] is False and answer["models"]["triage"]["version"] == "3"
        expected = personal.proba(personal.encode([PATIENT]))[0, 1]
        assert answer["referral_risk"]["probability"] == pytest.approx(expected)
        assert abs(expected - global_advisor.assess([PATIENT])[0].referral_risk.probability) > 1e-3
        card = client.get(answer["models"]["referral_risk"]["card_url"])  # in Chinese unless asked otherwise
        assert card.status_code == 200 and card.text.startswith("# 模型说明：fenji-referral_risk 第 3 版")
        assert "## 本院个性化" in card.text and f"本院使用：第 {info.version} 版" in card.text
        english = client.get(answer["models"]["referral_risk"]["card_url"], params={"lang": "en"})
        assert english.text.startswith("# fenji-referral_risk version 3") and "Personalised at this clinic" in english.text
        notes = client.get("/api/v1/model").json()["personalisation"]
        assert notes["referral_risk"].startswith("personalised") and notes["triage"].startswith("global model")


def served_referral(site):
    advisor, notes = apply_personalisation(site, ModelDistribution(site, None).last_good())
    return advisor.models["referral_risk"], notes["referral_risk"]


def test_a_new_production_version_falls_back_to_the_global_model(site):
    cache_version(site, "4", train_models(rows=900, seed=5))
    ref, note = served_referral(site)
    assert (ref.personalised, ref.version) == (False, "4")
    assert "derived from version 3, production is version 4" in note


def test_a_personalised_model_changed_on_disk_is_refused(site):
    parameters = site / "personalised" / "referral_risk" / "bundle" / "parameters.npy"
    np.save(parameters, np.load(parameters) + 0.5, allow_pickle=False)
    ref, note = served_referral(site)
    assert (ref.personalised, ref.version) == (False, "3")
    assert "changed on disk" in note


def test_the_site_can_switch_back_to_the_global_model(site):
    runner = CliRunner()
    assert runner.invoke(fenji_app, ["node", "personalised", "off", "--site-dir", str(site)]).exit_code == 0
    ref, note = served_referral(site)
    assert not ref.personalised and "off at this site" in note
    assert runner.invoke(fenji_app, ["node", "personalised", "on", "--site-dir", str(site)]).exit_code == 0
    assert served_referral(site)[0].personalised


def test_a_reload_keeps_serving_the_personalised_model(site):
    distribution = ModelDistribution(site, None)
    tokens = TokenStore.for_site(site)
    app = create_app(AdvisorHolder(distribution.last_good()), site_dir=site, tokens=tokens,
                     provider=distribution.last_good)
    admin = tokens.create(role=Role.SITE_ADMIN, name="admin").token
    with TestClient(app) as client:
        reloaded = client.post("/api/v1/admin/reload", headers={"Authorization": f"Bearer {admin}"})
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["current"]["referral_risk"]["personalised"] is True
