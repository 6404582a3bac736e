"""Tokens (hashed, shown once, revocable, usable from the CLI while the server runs), model reload and
hot swap under load, and clean answers when the advisor or the server itself fails."""

from __future__ import annotations

import json
import math
import random
import stat
import threading
import time

import httpx
import pytest
from typer.testing import CliRunner

from models.spec import load_task
from node_agent.cli_tokens import token_app
from node_agent.serve import AdvisorHolder, Role, TokenStore, create_app
from tests.node_agent.serve.conftest import issue_tokens, running
from tests.node_agent.serve.fake_advisor import FakeAdvisor
from tests.node_agent.serve.test_score import PATIENT


def test_tokens_are_stored_hashed_and_shown_once(served):
    with served.client("site_admin") as admin:
        created = admin.post("/api/v1/admin/tokens", json={"name": "Dr Li", "role": "doctor"})
        listed = admin.get("/api/v1/admin/tokens").json()
    assert created.status_code == 201
    token, info = created.json()["token"], created.json()["info"]
    assert info["name"] == "Dr Li" and info["role"] == "doctor"
    assert all("token" not in t and "sha256" not in t for t in listed)
    assert info["token_id"] in {t["token_id"] for t in listed}
    stored = served.tokens.path.read_text(encoding="utf-8")
    assert token not in stored and token[3:20] not in stored
    assert stat.S_IMODE(served.tokens.path.stat().st_mode) == 0o600
    me = httpx.get(f"{served.base_url}/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["name"] == "Dr Li"


def test_a_revoked_token_stops_working_at_once(served):
    with served.client("site_admin") as admin:
        issued = admin.post("/api/v1/admin/tokens", json={"name": "locum", "role": "doctor"}).json()
        me = httpx.get(f"{served.base_url}/api/v1/me", headers={"Authorization": f"Bearer {issued['token']}"})
        assert me.status_code == 200
        assert admin.delete(f"/api/v1/admin/tokens/{issued['info']['token_id']}").status_code == 200
        assert admin.delete(f"/api/v1/admin/tokens/{issued['info']['token_id']}").status_code == 404
    me = httpx.get(f"{served.base_url}/api/v1/me", headers={"Authorization": f"Bearer {issued['token']}"})
    assert me.status_code == 401 and me.headers["www-authenticate"] == "Bearer"


def test_the_last_site_admin_token_cannot_be_revoked_over_the_api(tmp_path):
    tokens = TokenStore(tmp_path / "tokens.json")
    only = tokens.create(role=Role.SITE_ADMIN, name="admin")
    with pytest.raises(Exception) as refused:
        tokens.revoke(only.info.token_id)
    assert refused.value.status_code == 409
    assert tokens.revoke(only.info.token_id, keep_last_admin=False).token_id == only.info.token_id
    assert tokens.authenticate(only.token) is None


def test_cli_creates_a_token_the_running_server_accepts(served):
    result = CliRunner().invoke(token_app, ["create", "--site-dir", str(served.site_dir), "--role", "commissioner",
                                            "--name", "Health commission"])
    assert result.exit_code == 0, result.output
    token = next(line for line in result.output.splitlines() if line.startswith("fj_"))
    me = httpx.get(f"{served.base_url}/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["role"] == "commissioner"
    listed = CliRunner().invoke(token_app, ["list", "--site-dir", str(served.site_dir)])
    assert "Health commission" in listed.output and token not in listed.output


def test_reload_swaps_in_the_providers_advisor(fresh):
    fresh.provide = lambda: FakeAdvisor(version="7")
    with fresh.client("site_admin") as admin:
        reloaded = admin.post("/api/v1/admin/reload").json()
    with fresh.client("doctor") as doctor:
        answer = doctor.post("/api/v1/score", json=PATIENT).json()
    assert reloaded["swapped"] and {m["version"] for m in reloaded["current"].values()} == {"7"}
    assert {m["version"] for m in answer["models"].values()} == {"7"}


def test_reload_refuses_an_advisor_with_other_features(fresh):
    other = FakeAdvisor(version="x")
    other.spec = load_task("heart_disease")
    fresh.provide = lambda: other
    with fresh.client("site_admin") as admin:
        response = admin.post("/api/v1/admin/reload")
    assert response.status_code == 409 and response.json()["detail"][0]["type"] == "incompatible_advisor"
    assert fresh.holder.current is fresh.spy


def test_reload_without_provider_or_with_a_failing_one(tmp_path):
    def broken():
        raise RuntimeError("registry unreachable")

    for provider, status in [(None, 409), (broken, 503)]:
        tokens = TokenStore.for_site(tmp_path / str(status))
        token = issue_tokens(tokens)["site_admin"]
        app = create_app(AdvisorHolder(FakeAdvisor()), site_dir=tmp_path / str(status), tokens=tokens,
                         provider=provider)
        with running(app) as url:
            response = httpx.post(f"{url}/api/v1/admin/reload", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == status and "registry unreachable" not in response.text


class SlowFake(FakeAdvisor):
    """Takes a little time per call, so that swaps land in the middle of requests."""

    def assess(self, records):
        time.sleep(0.002)
        return super().assess(records)


def test_hot_swap_under_concurrent_requests_loses_none(tmp_path):
    versions = {"1": SlowFake("1"), "2": SlowFake("2", offset=1.0)}
    holder, tokens = AdvisorHolder(versions["1"]), TokenStore.for_site(tmp_path)
    token = issue_tokens(tokens)["doctor"]
    app = create_app(holder, site_dir=tmp_path, tokens=tokens)
    failures, answers, sent, done = [], [], [], threading.Event()

    def doctor(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            for _ in range(25):
                patients = [{**PATIENT, "heart_rate": rng.randint(40, 180), "spo2": rng.choice([None, 88, 95, 99])}
                            for _ in range(rng.choice([1, 3]))]
                sent.append(len(patients))
                try:
                    response = (client.post("/api/v1/score", json=patients[0]) if len(patients) == 1 else
                                client.post("/api/v1/score/batch", json={"patients": patients}))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                    continue
                body = response.json()
                answers.extend(zip(patients, body if isinstance(body, list) else [body]))

    def swapper() -> None:
        n = 0
        while not done.is_set():
            n += 1
            holder.swap(versions["2" if n % 2 else "1"])
            time.sleep(0.001)
        swaps.append(n)

    swaps: list[int] = []
    with running(app) as url:
        swap_thread = threading.Thread(target=swapper)
        swap_thread.start()
        doctors = [threading.Thread(target=doctor, args=(seed,)) for seed in range(6)]
        for t in doctors:
            t.start()
        for t in doctors:
            t.join()
        done.set()
        swap_thread.join()

    assert failures == []
    assert len(answers) == sum(sent) >= 6 * 25
    assert swaps[0] > 20
    seen = set()
    for patient, answer in answers:
        (version,) = {m["version"] for m in answer["models"].values()}  # one version per answer, never a mix
        seen.add(version)
        record = {**dict.fromkeys(versions["1"].spec.feature_names), **patient}
        expected = versions[version].referral_probability(record)
        assert math.isclose(answer["referral_risk"]["probability"], expected, rel_tol=1e-12)
    assert seen == {"1", "2"}


class BrokenAdvisor(FakeAdvisor):
    def assess(self, records):
        raise RuntimeError("secret patient detail: Zhang San, 13800000000")


class BrokenTokens(TokenStore):
    def authenticate(self, token):
        raise KeyError("bug in the token store")


def test_failures_answer_clean_json_without_a_traceback(tmp_path):
    tokens = TokenStore.for_site(tmp_path / "a")
    token = issue_tokens(tokens)["doctor"]
    broken_advisor = create_app(AdvisorHolder(BrokenAdvisor()), site_dir=tmp_path / "a", tokens=tokens)
    broken_server = create_app(AdvisorHolder(FakeAdvisor()), site_dir=tmp_path / "b",
                               tokens=BrokenTokens(tmp_path / "b" / "tokens.json"))
    with running(broken_advisor) as url:
        advisor_down = httpx.post(f"{url}/api/v1/score", json=PATIENT, headers={"Authorization": f"Bearer {token}"})
        bad_input = httpx.post(f"{url}/api/v1/score", json={**PATIENT, "spo2": 130},
                               headers={"Authorization": f"Bearer {token}"})
    with running(broken_server) as url:
        bug = httpx.get(f"{url}/api/v1/model", headers={"Authorization": "Bearer whatever"})
    assert advisor_down.status_code == 503 and advisor_down.json()["detail"][0]["type"] == "advisor_failed"
    assert bad_input.status_code == 422  # validation answers before the (broken) advisor is reached
    assert bug.status_code == 500 and bug.json()["detail"][0]["type"] == "internal_error"
    for response in (advisor_down, bug):
        assert "Traceback" not in response.text and "Zhang San" not in response.text and "bug in" not in response.text
        json.loads(response.text)
