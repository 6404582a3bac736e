"""Pinned identity: a node encrypts under no context its enrolled key holder did not sign; an
enrolment is a secret of the site, written readable by its owner only, and read with clear errors."""

from __future__ import annotations

import json
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.errors import PrivacyError, SettingsError
from federation.identity import (
    ENROLMENT_FILE,
    Enrolment,
    context_signature,
    fingerprint,
    load_enrolment,
    verify_context,
)
from keyholder import KeyHolderState


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> KeyHolderState:
    state = KeyHolderState(tmp_path_factory.mktemp("identity") / "keyholder")
    state.init()
    return state


@pytest.fixture(scope="module")
def enrolment(state) -> Enrolment:
    return state.enrol("site_a", "CLINIC-A")


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_key_holders_signature_over_its_context_is_accepted(state, enrolment):
    verify_context(state.public_context(), state.context_signature(), state.verify_key)
    # What a node holds after enrolment is the same key.
    verify_context(state.public_context(), state.context_signature(), enrolment.verify_key_bytes)
    assert enrolment.keyholder == fingerprint(state.verify_key) == state.keyholder_id


def test_a_context_signed_by_another_key_is_refused(state):
    # A coordinator that sends its own public context signs it with its own key, not the key holder's.
    other = Ed25519PrivateKey.generate()
    with pytest.raises(PrivacyError, match=state.keyholder_id):
        verify_context(state.public_context(), context_signature(other, state.public_context()), state.verify_key)
    # Nor does the key holder's signature pass for a node pinned to another key holder.
    with pytest.raises(PrivacyError):
        verify_context(state.public_context(), state.context_signature(), _raw(other))


def test_a_tampered_context_is_refused(state):
    context = bytearray(state.public_context())
    context[len(context) // 2] ^= 0x01
    with pytest.raises(PrivacyError, match="not signed by the enrolled key holder"):
        verify_context(bytes(context), state.context_signature(), state.verify_key)
    with pytest.raises(PrivacyError):
        verify_context(state.public_context() + b"\x00", state.context_signature(), state.verify_key)


@pytest.mark.parametrize("signature", [b"", b"\x00" * 64, b"short"])
def test_an_empty_or_meaningless_signature_is_refused(state, signature):
    with pytest.raises(PrivacyError):
        verify_context(state.public_context(), signature, state.verify_key)


def test_a_meaningless_verification_key_is_refused_not_a_crash(state):
    with pytest.raises(PrivacyError):
        verify_context(state.public_context(), state.context_signature(), b"not a key")


def test_an_enrolment_is_written_readable_by_its_owner_only(tmp_path, enrolment):
    old = os.umask(0)  # even where new files would be world-readable
    try:
        path = enrolment.save(tmp_path / "site" / ENROLMENT_FILE)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    assert load_enrolment(path) == enrolment
    assert not list(path.parent.glob(".*tmp"))  # no copy left beside it


def test_saving_over_a_readable_file_narrows_it(tmp_path, enrolment):
    path = tmp_path / ENROLMENT_FILE
    path.write_text("{}")
    path.chmod(0o644)
    enrolment.save(path)
    assert _mode(path) == 0o600
    assert load_enrolment(path).site_key_bytes == enrolment.site_key_bytes


def test_a_missing_enrolment_says_how_to_enrol(tmp_path):
    with pytest.raises(SettingsError, match=r"no enrolment at .*fenji keyholder enrol.*fenji node enrol"):
        load_enrolment(tmp_path / ENROLMENT_FILE)
    with pytest.raises(SettingsError, match="no enrolment at"):
        load_enrolment(tmp_path)  # a folder is not an enrolment file


@pytest.mark.parametrize(
    "content",
    [
        b"not json at all",
        b"\xff\xfe\x00garbage",
        b"",
        b"[]",
        b"{}",
        json.dumps({"site_id": "site_a"}).encode(),
    ],
    ids=["text", "binary", "empty", "a list", "no fields", "fields missing"],
)
def test_a_file_that_is_not_an_enrolment_is_a_settings_error(tmp_path, content):
    path = tmp_path / ENROLMENT_FILE
    path.write_bytes(content)
    with pytest.raises(SettingsError, match="is not an enrolment file"):
        load_enrolment(path)


def test_an_enrolment_with_an_unknown_field_is_refused(tmp_path, enrolment):
    path = tmp_path / ENROLMENT_FILE
    path.write_text(json.dumps(enrolment.model_dump() | {"secret_key": "oops"}))
    with pytest.raises(SettingsError, match="is not an enrolment file"):
        load_enrolment(path)
