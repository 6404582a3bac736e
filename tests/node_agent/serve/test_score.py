"""Scoring against a real uvicorn server: valid input is scored, bad input is a 422/413 naming every
offending field and never reaches the advisor, missing stays missing, and nothing answers with a 500."""

from __future__ import annotations

import pytest

import node_agent.serve
from tests.node_agent.serve.conftest import MAX_BATCH
from tests.node_agent.serve.fake_advisor import FakeAdvisor

PATIENT = {"age": 72, "sex": "F", "complaint": "dyspnoea", "heart_rate": 112, "spo2": 91, "resp_rate": 26,
           "temperature": 37.9, "sbp": 138, "dbp": 84, "avpu": "A", "pain_score": 3, "arrival": "walk_in",
           "hx_hypertension": True, "hx_diabetes": False, "hx_copd": True, "hx_heart_disease": False}

# (description, body, {field: error type}) - every offending field must be named with its type
BAD_PATIENTS = [
    ("impossible vitals", {**PATIENT, "heart_rate": 900, "spo2": 130},
     {"heart_rate": "less_than_equal", "spo2": "less_than_equal"}),
    ("below range", {**PATIENT, "temperature": 12, "age": -1},
     {"temperature": "greater_than_equal", "age": "greater_than_equal"}),
    ("wrong types", {**PATIENT, "heart_rate": "fast", "age": "72", "hx_copd": "yes", "sex": 1},
     {"heart_rate": "float_type", "age": "float_type", "hx_copd": "bool_type", "sex": "literal_error"}),
    ("booleans are not numbers nor numbers booleans", {**PATIENT, "spo2": True, "hx_diabetes": 1},
     {"spo2": "float_type", "hx_diabetes": "bool_type"}),
    ("unknown categories", {**PATIENT, "sex": "X", "complaint": "headache", "avpu": "confused"},
     {"sex": "literal_error", "complaint": "literal_error", "avpu": "literal_error"}),
    ("missing required", {k: v for k, v in PATIENT.items() if k not in ("age", "complaint")},
     {"age": "missing", "complaint": "missing"}),
    ("required given as null", {**PATIENT, "sex": None}, {"sex": "literal_error"}),
    ("unknown fields", {**PATIENT, "diagnosis": "MI", "Heart_Rate": 80},
     {"diagnosis": "extra_forbidden", "Heart_Rate": "extra_forbidden"}),
    ("everything at once", {"heart_rate": 900, "sex": "X", "weight": 70, "spo2": "low"},
     {"heart_rate": "less_than_equal", "sex": "literal_error", "weight": "extra_forbidden", "spo2": "float_type",
      "age": "missing", "complaint": "missing"}),
]


def named(body: dict) -> dict[str, str]:
    return {item["field"]: item["type"] for item in body["detail"] if item["field"]}


def test_public_api_is_listed():
    for name in node_agent.serve.__all__:
        assert hasattr(node_agent.serve, name), name
    assert {"create_app", "AdvisorHolder", "Scorer", "TokenStore", "ACCESS", "Role"} <= set(node_agent.serve.__all__)


def test_scores_one_patient(served):
    with served.client("doctor") as client:
        response = client.post("/api/v1/score", json=PATIENT)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["triage"]["level"] in {"1", "2", "3", "4", "5"}
    assert 0 <= answer["referral_risk"]["probability"] <= 1
    assert answer["tier"]["tier"] in {"community", "county", "tertiary"}
    assert answer["diagnoses"] and answer["disclaimer"]["zh"] and answer["not_recorded"] == []
    for task, ref in answer["models"].items():
        assert ref["card_url"].startswith(f"/api/v1/model/{task}/card")
    assert served.spy.calls[-1] == [{name: PATIENT[name] for name in served.spy.spec.feature_names}]


def test_answers_follow_the_inputs():
    """The fake's risk rises with heart rate and falls with SpO2 (so tests can tell answers apart)."""
    fake, base = FakeAdvisor(), dict(PATIENT)
    risk = lambda **kw: fake.assess([{**base, **kw}])[0].referral_risk.probability
    assert risk(heart_rate=140) > risk(heart_rate=90)
    assert risk(spo2=85) > risk(spo2=99)


@pytest.mark.parametrize("absent", ["left out", "null"])
def test_an_optional_feature_not_recorded_is_scored_as_missing(served, absent):
    patient = {k: v for k, v in PATIENT.items() if k not in ("spo2", "sbp")}
    if absent == "null":
        patient.update(spo2=None, sbp=None)
    with served.client("doctor") as client:
        answer = client.post("/api/v1/score", json=patient).json()
    assert set(answer["not_recorded"]) == {"spo2", "sbp"}
    record = served.spy.calls[-1][0]
    assert record["spo2"] is None and record["sbp"] is None  # never a default like 97 %


@pytest.mark.parametrize("description, body, expected", BAD_PATIENTS, ids=[b[0] for b in BAD_PATIENTS])
def test_bad_input_is_a_422_naming_every_field_and_never_reaches_the_advisor(served, description, body, expected):
    calls = len(served.spy.calls)
    with served.client("doctor") as client:
        single = client.post("/api/v1/score", json=body)
        batch = client.post("/api/v1/score/batch", json={"patients": [PATIENT, body, PATIENT]})
    assert single.status_code == 422, single.text
    assert named(single.json()) == expected
    assert batch.status_code == 422, batch.text
    items = batch.json()["detail"]
    assert {item["field"]: item["type"] for item in items} == expected
    assert {item["patient"] for item in items} == {1}
    assert all(item["text"]["zh"] and item["text"]["en"] for item in items)
    assert len(served.spy.calls) == calls


@pytest.mark.parametrize("raw, kind", [
    (b'{"age": 70, "sex": "M", "complaint": "fever", "heart_rate": NaN}', "finite_number"),
    (b'{"age": 70, "sex": "M", "complaint": "fever", "temperature": Infinity}', "finite_number"),
    (b'{"age": 70, "sex": "M", "complaint": "fever", "spo2": 1e400}', "finite_number"),
    (b'{"age": 70, "sex": "M", ', "json_invalid"),
    (b'[{"age": 70}]', "model_attributes_type"),
    (b'', "missing"),
])
def test_malformed_json_and_non_finite_numbers_are_422(served, raw, kind):
    calls = len(served.spy.calls)
    with served.client("doctor") as client:
        response = client.post("/api/v1/score", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert kind in {item["type"] for item in response.json()["detail"]}
    assert len(served.spy.calls) == calls


def test_batch_answers_in_order(served):
    patients = [{**PATIENT, "heart_rate": hr} for hr in (70, 130, 95)]
    with served.client("doctor") as client:
        batch = client.post("/api/v1/score/batch", json={"patients": patients}).json()
        singles = [client.post("/api/v1/score", json=p).json() for p in patients]
    # equal up to float rounding: a matrix product over 3 rows may round the last bit unlike one over 1
    assert _same(batch, singles)


def _same(a, b) -> bool:
    """Equal JSON, floats within 1e-9."""
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= 1e-9
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_oversized_batch_is_413_before_any_patient_is_read(served):
    calls = len(served.spy.calls)
    patients = [PATIENT] * (MAX_BATCH + 1)
    patients[0] = {"heart_rate": 900}  # would be a 422 if it were validated
    with served.client("doctor") as client:
        response = client.post("/api/v1/score/batch", json={"patients": patients})
        huge = client.post("/api/v1/score", content=b'{"note": "' + b"x" * 2_000_000 + b'"}',
                           headers={"Content-Type": "application/json"})
        empty = client.post("/api/v1/score/batch", json={"patients": []})
    assert response.status_code == 413
    (item,) = response.json()["detail"]
    assert item["type"] == "payload_too_large" and f"at most {MAX_BATCH} patients" in item["msg"]
    assert huge.status_code == 413 and huge.json()["detail"][0]["type"] == "payload_too_large"
    assert empty.status_code == 422 and empty.json()["detail"][0]["type"] == "too_short"
    assert len(served.spy.calls) == calls


def test_form_schema_comes_from_the_spec(served):
    with served.client("doctor") as client:
        form = client.get("/api/v1/schema/form").json()
    spec = served.spy.spec
    assert [f["name"] for f in form["features"]] == spec.feature_names
    heart = next(f for f in form["features"] if f["name"] == "heart_rate")
    assert (heart["min"], heart["max"], heart["display"]["zh"]) == (20, 250, "心率")
    sex = next(f for f in form["features"] if f["name"] == "sex")
    assert sex["required"] and {o["value"]: o["display"]["zh"] for o in sex["options"]} == {"F": "女", "M": "男"}
    assert set(form["tiers"]) == {"community", "county", "tertiary"}


def test_model_versions_and_cards(served):
    with served.client("data_scientist") as client:
        info = client.get("/api/v1/model").json()
        task, ref = next(iter(info["models"].items()))
        card = client.get(f"/api/v1/model/{task}/card", params={"version": ref["version"]})
        stale = client.get(f"/api/v1/model/{task}/card", params={"version": "no-such-version"})
        unknown = client.get("/api/v1/model/no_such_task/card")
        english = client.get(f"/api/v1/model/{task}/card", params={"lang": "en"})
        other = client.get(f"/api/v1/model/{task}/card", params={"lang": "fr"})
    assert info["task"] == "referral_risk" and info["models"] == {
        k: v.model_dump() for k, v in served.spy.models.items()}
    assert card.status_code == 200 and card.headers["content-type"].startswith("text/markdown")
    assert card.text == served.spy.model_card(task, "zh-CN") and english.text == served.spy.model_card(task, "en")
    assert other.status_code == 422
    assert stale.status_code == 404 and "no longer in use" in stale.json()["detail"][0]["msg"]
    assert unknown.status_code == 404


def test_security_headers_and_no_caching_of_patient_data(served):
    with served.client("doctor") as client:
        answer = client.post("/api/v1/score", json=PATIENT)
        page = client.get("/")
    assert answer.headers["cache-control"] == "no-store"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "https://" not in page.text and "http://" not in page.text
