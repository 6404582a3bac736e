"""The key holder's service, a real uvicorn process of its own: its context is signed with the key
the sites pinned, it decrypts only for callers with a valid token, and each refusal has its status."""

from __future__ import annotations

import base64
import itertools
import json
import socket

import httpx
import numpy as np
import pytest

from coordinator.aggregator import Aggregator
from federation.crypto import encrypt_contribution, load_public_context
from federation.identity import verify_context
from federation.keyholder_api import (
    DECRYPT_PATH,
    INFO_PATH,
    REQUEST_HEADER,
    DecryptRequest,
    KeyHolderInfo,
    encode_request,
)
from federation.tags import QueryLabel
from keyholder import KeyHolderState
from keyholder.process import start_key_holder_service

LENGTH = 5
_runs = itertools.count()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """(url, state, enrolments, token): a key holder with three enrolled sites, served on loopback."""
    state = KeyHolderState(tmp_path_factory.mktemp("service") / "keyholder")
    state.init()
    enrolments = {f"site_{i}": state.enrol(f"site_{i}", f"INST-{i}") for i in range(3)}
    token = state.issue_token("coordinator")
    running = start_key_holder_service(state.home, min_sites=3)
    try:
        yield running.url, state, enrolments, token
    finally:
        running.stop()


@pytest.fixture(scope="module")
def public_context(service) -> bytes:
    url, *_ = service
    return KeyHolderInfo.model_validate(httpx.get(url + INFO_PATH).json()).public_context_bytes


def _query(service, public_context, senders, *, cohort=None):
    """A fresh label, the encrypted sum of ``senders``' replies to it, the request claiming ``cohort``."""
    _, _, enrolments, _ = service
    label = QueryLabel(run_id=f"run-{next(_runs)}", phase="train", round=1, task="referral_risk")
    context = load_public_context(public_context)
    values = {s: np.linspace(-1, 1, LENGTH) * (i + 1) for i, s in enumerate(enrolments)}
    blob = Aggregator(public_context).add([
        encrypt_contribution(context, values[s], site_key=enrolments[s].site_key_bytes, label=label)
        for s in senders])
    request = DecryptRequest.of(label, cohort=list(senders) if cohort is None else cohort, length=LENGTH,
                                scale_bits=40)
    return blob, request, sum(values[s] for s in senders)


def _post(url, blob, request, token, **headers):
    sent = {"Content-Type": "application/octet-stream", REQUEST_HEADER: encode_request(request), **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return httpx.post(url + DECRYPT_PATH, content=blob, headers=sent, timeout=30)


def test_health_names_the_key_holder(service):
    url, state, _, _ = service
    assert httpx.get(url + "/v1/health").json() == {"status": "ok", "keyholder": state.keyholder_id}


def test_info_is_signed_with_the_key_the_sites_pinned(service):
    url, _, enrolments, _ = service
    info = KeyHolderInfo.model_validate(httpx.get(url + INFO_PATH).json())
    verify_context(info.public_context_bytes, info.signature_bytes, enrolments["site_0"].verify_key_bytes)
    load_public_context(info.public_context_bytes)  # raises if it carried the secret key
    assert (info.min_sites, info.enrolled_sites) == (3, 3)


def test_decrypts_an_honest_sum_for_a_caller_with_a_token(service, public_context):
    url, state, enrolments, token = service
    blob, request, expected = _query(service, public_context, list(enrolments))
    answer = _post(url, blob, request, token)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"
    np.testing.assert_allclose(np.frombuffer(answer.content, dtype="<f8"), expected, atol=1e-6)
    granted = state.ledger.entries()[-1]
    assert (granted["action"], granted["actor"]) == ("decrypt", "coordinator")


@pytest.mark.parametrize("token", [None, "fkh_not-a-token-anyone-issued"])
def test_no_or_a_wrong_token_is_401_and_recorded(service, public_context, token):
    url, state, enrolments, _ = service
    blob, request, _ = _query(service, public_context, list(enrolments))
    answer = _post(url, blob, request, token)
    assert answer.status_code == 401 and answer.json()["error"] == "NotAuthenticated"
    entry = state.ledger.entries()[-1]
    assert entry["action"] == "unauthenticated"
    assert request.label.once_key not in {e["details"].get("query") for e in state.ledger.entries()}
    if token is not None:
        assert token not in state.ledger.path.read_text()


def test_a_revoked_token_is_401(service, public_context):
    url, state, enrolments, _ = service
    stolen = state.issue_token("old-coordinator")
    state.revoke_token("old-coordinator")
    blob, request, _ = _query(service, public_context, list(enrolments))
    assert _post(url, blob, request, stolen).status_code == 401


def test_too_few_sites_is_403(service, public_context):
    url, _, _, token = service
    blob, request, _ = _query(service, public_context, ["site_0", "site_1"])
    answer = _post(url, blob, request, token)
    assert answer.status_code == 403 and answer.json()["error"] == "NotEnoughSitesError"


def test_an_unknown_site_in_the_cohort_is_403(service, public_context):
    url, _, enrolments, token = service
    blob, request, _ = _query(service, public_context, list(enrolments), cohort=["site_0", "site_1", "site_x"])
    answer = _post(url, blob, request, token)
    assert answer.status_code == 403 and answer.json()["error"] == "CohortError"


def test_a_second_decryption_of_a_query_is_409(service, public_context):
    url, _, enrolments, token = service
    blob, request, _ = _query(service, public_context, list(enrolments))
    assert _post(url, blob, request, token).status_code == 200
    again = _post(url, blob, request, token)
    assert again.status_code == 409 and again.json()["error"] == "ReplayError"


def test_a_forged_sum_is_422(service, public_context):
    url, _, enrolments, token = service
    blob, request, _ = _query(service, public_context, ["site_0"] * 3, cohort=list(enrolments))
    answer = _post(url, blob, request, token)
    assert answer.status_code == 422 and answer.json()["error"] == "AggregateCheckError"
    assert "site_0" not in answer.text and "[" not in answer.json()["detail"]  # says nothing about the values


def test_bytes_that_are_no_ciphertext_are_422(service, public_context):
    url, _, enrolments, token = service
    _, request, _ = _query(service, public_context, list(enrolments))
    answer = _post(url, b"\x01\x00\x00\x00" + b"\x05" * 8 + b"hello", request, token)
    assert answer.status_code == 422 and answer.json()["error"] == "CiphertextError"


_OUT_OF_RANGE = base64.urlsafe_b64encode(json.dumps({
    "run_id": "r", "phase": "steal", "round": 1, "task": "t", "cohort": ["site_0"], "length": 1, "scale_bits": 40,
}).encode()).decode()


@pytest.mark.parametrize("header", ["", "bm90IGpzb24", "%%%", _OUT_OF_RANGE], ids=["empty", "not-json", "not-base64",
                                                                               "bad-phase"])
def test_an_invalid_request_header_is_422_with_a_clear_message(service, public_context, header):
    url, _, enrolments, token = service
    blob, request, _ = _query(service, public_context, list(enrolments))
    answer = _post(url, blob, request, token, **{REQUEST_HEADER: header})
    assert answer.status_code == 422 and answer.json()["error"] == "InvalidRequest"
    assert REQUEST_HEADER in answer.json()["detail"]


def test_a_service_that_cannot_start_says_why(service, tmp_path):
    from keyholder.errors import KeyHolderStateError

    with pytest.raises(KeyHolderStateError, match="fenji keyholder init"):
        start_key_holder_service(tmp_path / "empty", min_sites=3)
    _, state, _, _ = service
    with socket.socket() as taken:  # the port is someone else's: uvicorn cannot bind and exits
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(KeyHolderStateError, match="exited") as refused:
            start_key_holder_service(state.home, min_sites=3, port=taken.getsockname()[1], timeout=60)
    assert "address already in use" in str(refused.value).lower()
