"""A ``referral_risk_text`` model from federation to the doctor: trained by Flower's simulation on the
small synthetic federation (ingested with its complaint texts), registered in MLflow, fetched and
verified as a node fetches it, served by the clinic's scoring app on a real uvicorn server. The
answer's explanation names words of the patient's own complaint, and no word of any other text."""

from __future__ import annotations

import json

import httpx
import pytest

from coordinator.registry import promote, register_outcome
from models.advisor import Advisor
from models.policy import load_policy
from models.spec import load_task
from models.text import normalise, terms
from node_agent.distribution import load_task_model
from node_agent.ingest import ingest_file
from node_agent.mapping import load_mapping
from node_agent.serve import AdvisorHolder, TokenStore, create_app
from node_agent.store import SiteStore
from simulation.engine import run_simulated_federation
from simulation.synth import write_federation
from tests.conftest import SMALL_CLINICS
from tests.node_agent.serve.conftest import issue_tokens
from tests.node_agent.serve.trained_advisor import _models
from tests.servers import running

ZH = "发热三天，咳嗽咳痰，胸闷气促"
EN = "Fever and cough for 3 days, short of breath"


@pytest.fixture(scope="module")
def text_federation(tmp_path_factory):
    """The small federation's exports, ingested for the text task (the complaint text is stored)."""
    spec = load_task("referral_risk_text")
    root = tmp_path_factory.mktemp("text-federation")
    sites, texts = [], []
    for name, path, mapping in write_federation(root / "exports", clinics=SMALL_CLINICS, seed=7):
        with SiteStore(root / "sites" / name) as store:
            ingest_file(store, spec, path, load_mapping(mapping))
            texts += [t for (t,) in store.connection.execute(
                f"SELECT complaint_text FROM {store.table_name(spec)} WHERE complaint_text IS NOT NULL").fetchall()]
        sites.append(root / "sites" / name)
    return spec, sites, texts


@pytest.fixture(scope="module")
def registered(text_federation, tmp_path_factory):
    spec, sites, _ = text_federation
    outcome = run_simulated_federation(spec, sites, rounds=2, encrypt=False)
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    model = register_outcome(outcome, tracking_uri=uri, policy=load_policy("default"))
    digest = promote(spec.name, model.version, tracking_uri=uri)
    return uri, model, digest


@pytest.fixture(scope="module")
def clinic(registered, tmp_path_factory):
    """The clinic's scoring app serving the registered text model for the referral risk."""
    uri, _, _ = registered
    site_dir = tmp_path_factory.mktemp("clinic") / "clinic_text"
    text_model, card, policy = load_task_model(uri, "referral_risk_text", alias="production",
                                               cache_dir=site_dir / "models")
    trained = _models()
    advisor = Advisor({"triage": trained["triage"], "diagnosis": trained["diagnosis"], "referral_risk": text_model},
                      policy, cards={"referral_risk": card})
    tokens = TokenStore.for_site(site_dir)
    token = issue_tokens(tokens)["doctor"]
    app = create_app(AdvisorHolder(advisor), site_dir=site_dir, tokens=tokens)
    with running(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                                           timeout=30) as client:
        yield client


def _patient(complaint: str | None) -> dict:
    return {"age": 67, "sex": "M", "heart_rate": 104, "resp_rate": 24, "temperature": 38.6, "spo2": 93,
            "complaint": "fever", "complaint_text": complaint}


def _grams(text: str) -> set[str]:
    return {t.shown for t in terms(text)} | {t.key[2:] for t in terms(text)}


def test_the_registered_text_model_is_the_one_served(registered, clinic):
    _, model, digest = registered
    assert model.name == "fenji-referral_risk_text" and len(digest) == 64
    info = clinic.get("/api/v1/model").json()
    assert info["models"]["referral_risk"]["name"] == "fenji-referral_risk_text"
    assert info["models"]["referral_risk"]["version"] == model.version
    assert "complaint_text" in info["features"]["referral_risk"]
    assert "complaint_text" not in info["features"]["triage"]  # the triage model in use ignores the text
    form = clinic.get("/api/v1/schema/form").json()
    assert {"name": "complaint_text", "kind": "text"}.items() <= next(
        f for f in form["features"] if f["name"] == "complaint_text").items()
    card = clinic.get(info["models"]["referral_risk"]["card_url"])
    assert card.status_code == 200 and "fenji-referral_risk_text" in card.text


@pytest.mark.parametrize("complaint", [ZH, EN])
def test_the_explanation_names_words_of_the_complaint_and_no_other(text_federation, registered, clinic, complaint):
    _, _, texts = text_federation
    answer = clinic.post("/api/v1/score", json=_patient(complaint))
    assert answer.status_code == 200, answer.text
    words = [item for item in answer.json()["explanation"] if item["word"]]
    assert words, answer.json()["explanation"]
    own = normalise(complaint)
    for item in words:
        assert item["feature"] == "complaint_text" and item["value"] in own
        assert item["title"] == {"zh": "主诉 (原文)", "en": "Chief complaint (text)"}
        assert item["direction"] == ("up" if item["contribution"] > 0 else "down")
    # The text feature is shown as words, never as one item holding the text or a hashed column.
    assert not [i for i in answer.json()["explanation"] if i["feature"] == "complaint_text" and not i["word"]]
    shown = json.dumps(answer.json(), ensure_ascii=False)
    assert "complaint_text#" not in shown

    # No n-gram of any other clinic's text that this complaint does not hold: only strings the answer
    # has without any text, or that the task specs hold (titles of features and classes), may match.
    fixed = json.dumps(clinic.post("/api/v1/score", json=_patient(None)).json(), ensure_ascii=False)
    fixed += "".join(load_task(t).model_dump_json() for t in ("triage", "diagnosis", "referral_risk_text"))
    others = {g for text in texts for g in _grams(text)} - _grams(complaint)
    others = {g for g in others if (not g.isascii() and len(g) >= 1) or len(g) >= 4}
    assert len(others) > 200  # the check below can fail
    assert sorted(g for g in others if g in shown and g not in fixed) == []
