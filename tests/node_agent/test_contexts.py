"""Public contexts travel once per run and are named by digest afterwards (``node_agent.contexts``)."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from flwr.app import ConfigRecord

from federation.crypto import WIDE_SCALE_BITS
from federation.errors import PrivacyError
from federation.identity import ENROLMENT_FILE, load_enrolment
from keyholder import KeyHolder, KeyHolderState
from node_agent import client_app, contexts
from node_agent.errors import PolicyRefusal
from tests.attacks.conftest import copy_sites

VALUES = np.array([3.0, 5.0, 7.0])


@pytest.fixture()
def site(small_federation, tmp_path):
    [site_dir] = copy_sites(small_federation[:1], tmp_path / "sites")
    state = KeyHolderState(tmp_path / "keyholder")
    state.init()
    state.enrol(site_dir.name, "INST-A").save(site_dir / ENROLMENT_FILE)
    # The shared fixture's sites may have run a federation already: start without kept contexts.
    shutil.rmtree(site_dir / contexts.CONTEXTS_DIR, ignore_errors=True)
    contexts._LOADED.clear()  # as in a ClientApp started in a fresh process
    return site_dir, state


def _digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _record(site_dir, config, round_):
    return client_app._ciphertext_record(site_dir, site_dir.name, config, VALUES, phase="stats", round_=round_,
                                         scale_bits=WIDE_SCALE_BITS)


def _first(state, run_id="run-1") -> ConfigRecord:
    public = state.public_context()
    return ConfigRecord({"run-id": run_id, "task-name": "referral_risk", "ckks-context": public,
                         "ckks-context-signature": state.context_signature(),
                         "ckks-context-sha256": _digest(public)})


def test_a_context_sent_once_is_used_by_digest_afterwards_even_in_a_fresh_process(site):
    site_dir, state = site
    first = _first(state)
    assert _record(site_dir, first, 0)["ciphertext"].numpy().size > 0
    kept = site_dir / contexts.CONTEXTS_DIR / f"{first['ckks-context-sha256']}.bin"
    assert kept.read_bytes() == state.public_context()
    contexts._LOADED.clear()  # the next message may reach another process: the kept file serves it
    later = ConfigRecord({"run-id": "run-1", "task-name": "referral_risk",
                          "ckks-context-sha256": first["ckks-context-sha256"]})
    record = _record(site_dir, later, 1)
    assert record["ciphertext"].numpy().size > 0


def test_a_digest_the_site_never_received_signed_is_refused_before_encrypting(site):
    site_dir, _ = site
    unknown = ConfigRecord({"run-id": "run-1", "task-name": "referral_risk",
                            "ckks-context-sha256": _digest(b"the coordinator's own context")})
    with pytest.raises(PolicyRefusal, match="never received"):
        _record(site_dir, unknown, 0)
    with pytest.raises(PolicyRefusal, match="names no ckks public context"):
        _record(site_dir, ConfigRecord({"run-id": "run-1", "task-name": "referral_risk"}), 0)


def test_a_sent_context_that_is_not_the_one_named_is_refused(site):
    site_dir, state = site
    config = _first(state)
    config["ckks-context-sha256"] = _digest(b"another context")
    with pytest.raises(PolicyRefusal, match="does not match the digest"):
        _record(site_dir, config, 0)


def test_a_kept_context_changed_on_disk_is_refused(site):
    site_dir, state = site
    first = _first(state)
    _record(site_dir, first, 0)
    kept = site_dir / contexts.CONTEXTS_DIR / f"{first['ckks-context-sha256']}.bin"
    kept.write_bytes(kept.read_bytes()[:-1] + b"\x00")
    contexts._LOADED.clear()
    later = ConfigRecord({"run-id": "run-1", "task-name": "referral_risk",
                          "ckks-context-sha256": first["ckks-context-sha256"]})
    with pytest.raises(PolicyRefusal, match="does not match its digest"):
        _record(site_dir, later, 1)


def test_an_unsigned_context_is_never_kept(site):
    site_dir, state = site
    config = _first(state)
    config["ckks-context-signature"] = b"\x00" * 64
    with pytest.raises(PrivacyError, match="not signed by the enrolled key holder"):
        _record(site_dir, config, 0)
    assert not (site_dir / contexts.CONTEXTS_DIR / f"{config['ckks-context-sha256']}.bin").exists()


def test_the_first_message_keeps_the_packed_context_too(site):
    site_dir, state = site
    info = KeyHolder(state, min_sites=1).info()
    config = _first(state)
    config["packed-context"] = info.packed_context_bytes
    config["packed-context-signature"] = info.packed_signature_bytes
    _record(site_dir, config, 0)
    enrolment = load_enrolment(site_dir / ENROLMENT_FILE)
    contexts._LOADED.clear()
    named = ConfigRecord({"packed-context-sha256": _digest(info.packed_context_bytes)})
    assert contexts.public_context(site_dir, named, "packed", enrolment) is not None
