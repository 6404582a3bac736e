"""The key holder's state folder: one enrolment per site and per clinic, tokens kept only as hashes,
revocations that take effect, keys that are never overwritten."""

from __future__ import annotations

import hashlib

import pytest

from keyholder import KeyHolderState
from keyholder.errors import EnrolmentError, KeyHolderStateError


@pytest.fixture()
def state(tmp_path) -> KeyHolderState:
    state = KeyHolderState(tmp_path / "kh")
    assert state.init()
    return state


def test_an_institution_enrolled_under_a_second_name_is_refused(state):
    state.enrol("clinic_a", "INST-1")
    with pytest.raises(EnrolmentError, match="already enrolled"):
        state.enrol("clinic_a_bis", "inst-1 ")
    assert list(state.enrolments()) == ["clinic_a"]


def test_a_site_id_is_enrolled_once(state):
    first = state.enrol("clinic_a", "INST-1")
    with pytest.raises(EnrolmentError, match="already enrolled"):
        state.enrol("clinic_a", "INST-2")
    assert state.site_keys(["clinic_a"]) == {"clinic_a": first.site_key_bytes}


def test_a_revoked_site_has_no_key_and_may_enrol_again_with_a_new_one(state):
    first = state.enrol("clinic_a", "INST-1")
    state.revoke_site("clinic_a")
    assert state.site_keys(["clinic_a"]) == {}
    second = state.enrol("clinic_a", "INST-1")
    assert second.site_key_bytes != first.site_key_bytes


def test_tokens_are_stored_as_hashes_only(state):
    token = state.issue_token("coord")
    stored = (state.home / "tokens.json").read_text()
    assert token not in stored
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    assert state.caller_of(token) == "coord"


def test_a_revoked_or_unknown_token_names_no_caller(state):
    token = state.issue_token("coord")
    assert state.caller_of(token + "x") is None
    state.revoke_token("coord")
    assert state.caller_of(token) is None
    reissued = state.issue_token("coord")
    assert state.caller_of(reissued) == "coord" and state.caller_of(token) is None


def test_init_never_overwrites_the_keys(state):
    secret = (state.home / "secret-context.bin").read_bytes()
    fingerprint = state.keyholder_id
    assert state.init() is False
    assert (state.home / "secret-context.bin").read_bytes() == secret and state.keyholder_id == fingerprint


def test_an_empty_folder_is_not_a_key_holder(tmp_path):
    with pytest.raises(KeyHolderStateError, match="fenji keyholder init"):
        KeyHolderState(tmp_path / "nothing").require()
