"""The serving benchmark's anchor: `mlflow models serve` really serves the model Fenji serves, from an
MLflow registry, under the benchmark's load generator, and is stopped afterwards."""

from __future__ import annotations

import httpx
import mlflow
import pytest

from bench.errors import BenchUnavailable
from bench.serving import _patients, _write_version
from bench.serving_load import server, wrk
from bench.serving_mlflow import (
    COMPARED,
    check_parity,
    invocation_body,
    mlflow_server,
    register_anchor,
)
from models.spec import load_task
from node_agent.cli_tokens import create_token

FEATURES = [f.name for f in load_task("referral_risk").features]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Fenji's scoring app and `mlflow models serve`, both on one trained version of the three models."""
    workdir = tmp_path_factory.mktemp("anchor")
    site_dir = workdir / "site"
    site_dir.mkdir()
    folders = _write_version(workdir / "models", "1", seed=5)
    doctor = create_token(site_dir, role="doctor", name="test doctor").token
    patients = _patients(12)
    model_uri, tracking_uri = register_anchor(workdir, folders, patients[:5], FEATURES)
    config = {"site_dir": str(site_dir), "versions": [{t: [str(f), v] for t, (f, v) in folders.items()}]}
    with server({"kind": "fenji", **config}, workdir) as fenji, \
            mlflow_server(model_uri, tracking_uri, workdir) as anchor:
        yield {"fenji": fenji, "anchor": anchor, "doctor": doctor, "patients": patients, "workdir": workdir}
    with pytest.raises(httpx.TransportError):  # the block's end stopped the MLflow server
        httpx.get(anchor + "/ping", timeout=2.0)


def _fields(answer: dict) -> dict:
    return {**{k: answer[k] for k in COMPARED},
            "models": {t: (m["name"], m["version"]) for t, m in answer["models"].items()}}


def test_mlflow_serve_answers_as_fenji_does_for_the_same_rows(servers):
    patients = servers["patients"]
    ours = httpx.post(servers["fenji"] + "/api/v1/score/batch", json={"patients": patients},
                      headers={"Authorization": f"Bearer {servers['doctor']}"}, timeout=60)
    theirs = httpx.post(servers["anchor"] + "/invocations", content=invocation_body(patients, FEATURES),
                        headers={"Content-Type": "application/json"}, timeout=60)
    assert ours.status_code == 200 and theirs.status_code == 200, theirs.text
    fenji, anchor = ours.json(), theirs.json()["predictions"]
    assert len(anchor) == len(fenji) == len(patients)
    assert [_fields(a) for a in anchor] == [_fields(a) for a in fenji]
    # the rows really differ (a constant answer would match trivially), and some have values not recorded
    assert len({a["referral_risk"]["probability"] for a in anchor}) > len(patients) // 2
    assert any(a["not_recorded"] for a in fenji)
    # it is MLflow's scoring server that answered
    assert httpx.get(servers["anchor"] + "/version", timeout=10).text.strip('"') == mlflow.__version__

    # the benchmark's own check agrees, and refuses an anchor whose answers differ: here one optional
    # feature (recorded for every patient) is left out of MLflow's request, so it scores it as missing
    assert check_parity(servers["fenji"], servers["doctor"], servers["anchor"], patients, FEATURES)[
        "same_predictions"]
    recorded = next(f.name for f in load_task("referral_risk").features
                    if not f.required and all(f.name in p for p in patients))
    with pytest.raises(BenchUnavailable, match="does not answer as Fenji does"):
        check_parity(servers["fenji"], servers["doctor"], servers["anchor"], patients,
                     [name for name in FEATURES if name != recorded])


def test_mlflow_serve_under_the_load_generator(servers):
    """One connection for about 2 s with the benchmark's request: real requests, none failed."""
    one = servers["patients"][:1]
    run = wrk(servers["anchor"] + "/invocations", body=invocation_body(one, FEATURES), token=None, connections=1,
              duration=2, workdir=servers["workdir"])
    assert run["requests"] > 0 and run["failed"] == 0, run["errors"]
    assert 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["p99"]
    # the single-patient request the load used is answered as Fenji's /score answers it
    answer = httpx.post(servers["anchor"] + "/invocations", content=invocation_body(one, FEATURES),
                        headers={"Content-Type": "application/json"}, timeout=60).json()["predictions"]
    score = httpx.post(servers["fenji"] + "/api/v1/score", json=one[0], timeout=60,
                       headers={"Authorization": f"Bearer {servers['doctor']}"}).json()
    assert [_fields(a) for a in answer] == [_fields(score)]


def test_an_mlflow_server_that_cannot_start_is_a_clear_error(tmp_path):
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(BenchUnavailable, match="mlflow models serve` exited"), \
            mlflow_server("models:/no-such-model@production", uri, tmp_path, timeout=170):
        pass
