"""The encrypted aggregate is the weighted average; only the key holder decrypts, and only ≥ min-sites."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from coordinator.aggregator import Aggregator
from federation.crypto import encrypt_vector, load_public_context
from federation.errors import PrivacyError
from keyholder.key_holder import KeyHolder


@pytest.fixture(scope="module")
def key_holder() -> KeyHolder:
    return KeyHolder(min_sites=3)


def _site_updates(rng: np.random.Generator, n_sites: int, n_params: int):
    thetas = [rng.normal(0, 1, n_params) for _ in range(n_sites)]
    counts = rng.integers(20, 2000, n_sites).astype(float)
    return thetas, counts


@pytest.mark.parametrize("n_params", [17, 5000])  # one ciphertext, and several chunks
def test_encrypted_weighted_average_matches_plaintext(key_holder, n_params):
    rng = np.random.default_rng(n_params)
    thetas, counts = _site_updates(rng, 5, n_params)
    context = load_public_context(key_holder.public_context)
    weights = counts / counts.sum()
    blobs = [encrypt_vector(context, np.append(w * t, w)) for t, w in zip(thetas, weights)]
    summed = Aggregator(key_holder.public_context).add(blobs)
    values = key_holder.decrypt_aggregate(summed, length=n_params + 1)
    encrypted_avg = values[:-1] / values[-1]
    plain_avg = np.average(np.stack(thetas), axis=0, weights=counts)
    assert np.max(np.abs(encrypted_avg - plain_avg)) < 1e-4
    assert values[-1] == pytest.approx(1.0, abs=1e-6)


def test_large_statistics_survive_at_the_statistics_scale(key_holder):
    context = load_public_context(key_holder.public_context)
    stats = [np.array([300.0, 75_000.0, 6.5e7]) * (i + 1) for i in range(4)]  # count, sum, sum of squares
    blobs = [encrypt_vector(context, v, scale_bits=25) for v in stats]
    values = key_holder.decrypt_aggregate(Aggregator(key_holder.public_context).add(blobs), length=3)
    np.testing.assert_allclose(values, np.sum(stats, axis=0), rtol=1e-9, atol=1e-2)


def test_aggregator_context_has_no_secret_key_and_cannot_decrypt(key_holder):
    aggregator = Aggregator(key_holder.public_context)
    assert not aggregator.context.has_secret_key()
    assert aggregator.context.is_public()
    blob = encrypt_vector(aggregator.context, np.arange(8.0))
    from federation.crypto import unpack

    ciphertext = ts.ckks_vector_from(aggregator.context, unpack(blob)[0])
    with pytest.raises(ValueError):
        ciphertext.decrypt()


def test_public_context_refuses_a_secret_key():
    secret = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 60])
    with pytest.raises(PrivacyError):
        load_public_context(secret.serialize(save_secret_key=True))


def test_malformed_ciphertext_is_refused(key_holder):
    with pytest.raises(PrivacyError):
        Aggregator(key_holder.public_context).add([b"not a ciphertext"])
