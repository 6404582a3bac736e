"""Attack 5: the coordinator sends its own CKKS public context in the round's config.

On the old main a node loaded whatever public context came in the round's config
(``load_public_context`` only checked that it carried no secret key; the key holder's digest was
computed but never compared), so a coordinator that made its own CKKS keys and sent their public
half got every site's statistics and updates encrypted under a key it could decrypt alone. Now each
site is enrolled with the key holder's Ed25519 verification key, and the node encrypts under no
context that key did not sign (``federation.identity.verify_context``): an unsigned context, one
signed with the coordinator's own key, and one carrying the key holder's real signature over a
different context are all refused before anything is encrypted or recorded as answered.
"""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord

from federation.crypto import WIDE_SCALE_BITS
from federation.errors import PrivacyError
from federation.identity import ENROLMENT_FILE, context_signature
from keyholder import KeyHolderState
from node_agent import client_app
from node_agent.answered import ANSWERED_FILE
from tests.attacks.conftest import copy_sites

VALUES = np.array([260.0, 12_000.0, 5.6e5, 130.0, 97.0])


@pytest.fixture()
def site(small_federation, tmp_path):
    """(site folder, its site id, the key holder's state): a real site enrolled with a real key holder."""
    [site_dir] = copy_sites(small_federation[:1], tmp_path / "sites")
    state = KeyHolderState(tmp_path / "keyholder")
    state.init()
    state.enrol(site_dir.name, "INST-A").save(site_dir / ENROLMENT_FILE)
    return site_dir, site_dir.name, state


@pytest.fixture()
def encrypted(monkeypatch) -> list:
    """Every vector the node encrypts (``encrypt_contribution`` as the node calls it)."""
    calls: list = []
    real = client_app.encrypt_contribution

    def spy(*args, **kwargs):
        calls.append(kwargs.get("label"))
        return real(*args, **kwargs)

    monkeypatch.setattr(client_app, "encrypt_contribution", spy)
    return calls


def _coordinators_context() -> bytes:
    """A CKKS context the coordinator made itself (it keeps the secret key), its public half sent."""
    own = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 60])
    own.global_scale = 2**40
    return own.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)


def _config(public_context: bytes, signature: bytes | None) -> ConfigRecord:
    config = ConfigRecord({"ckks-context": public_context, "run-id": "run-1", "task-name": "referral_risk"})
    if signature is not None:
        config["ckks-context-signature"] = signature
    return config


def _record(site_dir, site_id, config):
    return client_app._ciphertext_record(site_dir, site_id, config, VALUES, phase="stats", round_=0,
                                         scale_bits=WIDE_SCALE_BITS)


@pytest.mark.parametrize("signed_by", ["nobody", "the coordinator's own key", "the key holder, over another context"])
def test_a_context_the_key_holder_did_not_sign_is_refused(site, encrypted, signed_by):
    site_dir, site_id, state = site
    foreign = _coordinators_context()
    signature = {"nobody": None,
                 "the coordinator's own key": context_signature(Ed25519PrivateKey.generate(), foreign),
                 "the key holder, over another context": state.context_signature()}[signed_by]
    with pytest.raises(PrivacyError, match="not signed by the enrolled key holder"):
        _record(site_dir, site_id, _config(foreign, signature))
    assert encrypted == []
    assert not (site_dir / ANSWERED_FILE).exists()  # the query was not spent either


def test_control_the_key_holders_signed_context_is_used(site, encrypted):
    site_dir, site_id, state = site
    record = _record(site_dir, site_id, _config(state.public_context(), state.context_signature()))
    assert record["ciphertext"].numpy().size > 0
    assert len(encrypted) == 1
    assert "run-1|stats|0" in (site_dir / ANSWERED_FILE).read_text()
