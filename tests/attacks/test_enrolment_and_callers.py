"""Attack 8: one clinic enrolled twice, the coordinator asking the key holder directly, a stolen token.

On the old main the key holder had no notion of who a site was: a clinic that ran two nodes counted
as two sites, and a sum "over 3 sites" could hold only 2 clinics' data. Its only caller was whoever
held the multiprocessing proxy (the coordinator's process): any code there could ask for any
decryption, as often as it liked, with a count of its own choosing, and nothing could be revoked.
Now every clinic is enrolled once (one site id per institution code, its tag key given only then),
and the key holder is a service of its own: callers present a bearer token, every request names its
cohort, and cohorts of unknown or repeated site ids or fewer than min-sites sites are refused (403)
and written to the ledger. A thief holding the coordinator's token still gets nothing from one
site's ciphertext (the tags refuse it, 422), cannot try the same query again (409), and is shut out
once the token is revoked (401).
"""

from __future__ import annotations

import httpx
import pytest

from federation.keyholder_api import (
    DECRYPT_PATH,
    INFO_PATH,
    REQUEST_HEADER,
    KeyHolderInfo,
    encode_request,
)
from keyholder import KeyHolder, KeyHolderState
from keyholder.errors import CohortError, EnrolmentError
from keyholder.process import start_key_holder_service
from tests.attacks.conftest import (
    add,
    contributions,
    label,
    request,
    site_values,
    zero_with_slot,
)

LENGTH = 5
SITES = ["site_0", "site_1", "site_2"]


@pytest.mark.parametrize("code", ["INST-0", "inst-0", "  INST-0 "])
def test_a_clinic_enrolled_under_a_second_name_is_refused(tmp_path, code):
    state = KeyHolderState(tmp_path / "keyholder")
    state.init()
    for i, site in enumerate(SITES):
        state.enrol(site, f"INST-{i}")
    with pytest.raises(EnrolmentError, match="already enrolled as site 'site_0'"):
        state.enrol("site_0_again", code)
    assert "site_0_again" not in state.enrolments() and state.site_keys(["site_0_again"]) == {}
    assert [e["details"]["site"] for e in state.ledger.entries() if e["action"] == "enrol"] == SITES
    # A sum that counts the clinic twice cannot name the second name.
    key_holder = KeyHolder(state, min_sites=3)
    query = label("twice")
    with pytest.raises(CohortError, match="not enrolled"):
        key_holder.decrypt_aggregate(b"", request(query, ["site_0", "site_0_again", "site_1"], LENGTH))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """(url, state, enrolments, coordinator token, public context): a real key holder service."""
    state = KeyHolderState(tmp_path_factory.mktemp("attacks-service") / "keyholder")
    state.init()
    enrolments = {site: state.enrol(site, f"INST-{i}") for i, site in enumerate(SITES)}
    token = state.issue_token("coordinator")
    running = start_key_holder_service(state.home, min_sites=3)
    try:
        info = KeyHolderInfo.model_validate(httpx.get(running.url + INFO_PATH).json())
        yield running.url, state, enrolments, token, info.public_context_bytes
    finally:
        running.stop()


def _post(url: str, token: str, blob: bytes, decrypt_request) -> httpx.Response:
    return httpx.post(url + DECRYPT_PATH, content=blob, timeout=60, headers={
        "Authorization": f"Bearer {token}", REQUEST_HEADER: encode_request(decrypt_request),
        "Content-Type": "application/octet-stream"})


def _ledger_of(state: KeyHolderState, query) -> list[tuple[str, str]]:
    return [(e["action"], e["details"].get("error", "")) for e in state.ledger.entries()
            if e["details"].get("query") == query.once_key]


@pytest.mark.parametrize("senders, cohort, error", [
    (SITES, ["site_0", "site_1", "site_9"], "CohortError"),
    (["site_0", "site_0", "site_1"], ["site_0", "site_0", "site_1"], "CohortError"),
    (["site_0", "site_1"], ["site_0", "site_1"], "NotEnoughSitesError"),
], ids=["unknown site", "a site twice", "fewer than min-sites"])
def test_the_coordinator_asking_without_a_valid_cohort_is_refused(service, senders, cohort, error):
    url, state, enrolments, token, public = service
    query = label(f"direct-{error}-{len(set(cohort))}")
    values = site_values(SITES, LENGTH)
    blobs = contributions(public, enrolments, query, values)
    answer = _post(url, token, add(public, [blobs[s] for s in senders]), request(query, cohort, LENGTH))
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"] == error
    assert _ledger_of(state, query) == [("refused", error)]


def test_a_stolen_coordinator_token_gets_nothing(service):
    url, state, enrolments, _, public = service
    token = state.issue_token("coordinator-b")  # its own, so revoking it leaves the other tests alone
    query = label("stolen-token")
    values = site_values(SITES, LENGTH)
    site_0 = contributions(public, enrolments, query, {"site_0": values["site_0"]})["site_0"]
    # The thief dresses site_0's reply up as three sites' (it holds the public context too).
    dressed = add(public, [site_0, zero_with_slot(public, LENGTH), zero_with_slot(public, LENGTH)])

    first = _post(url, token, dressed, request(query, SITES, LENGTH))
    assert first.status_code == 422 and first.json()["error"] == "AggregateCheckError", first.text
    assert "tags" in first.json()["detail"]
    again = _post(url, token, dressed, request(query, SITES, LENGTH))
    assert again.status_code == 409 and again.json()["error"] == "ReplayError", again.text
    assert _ledger_of(state, query) == [("decrypt-refused", "AggregateCheckError"), ("refused", "ReplayError")]

    state.revoke_token("coordinator-b")
    fresh = label("stolen-token-after-revocation")
    honest = contributions(public, enrolments, fresh, values)
    revoked = _post(url, token, add(public, list(honest.values())), request(fresh, SITES, LENGTH))
    assert revoked.status_code == 401, revoked.text
    assert _ledger_of(state, fresh) == []  # not even looked at
    assert state.ledger.entries()[-1]["action"] == "unauthenticated"
