"""The encrypted aggregate is the weighted average; only the key holder decrypts, only sums over at
least min-sites enrolled sites, and only when the sum carries exactly the claimed cohort's tags."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from coordinator.aggregator import Aggregator
from federation.crypto import (
    encrypt_contribution,
    encrypt_vector,
    load_public_context,
    unpack,
)
from federation.errors import AggregateCheckError, PrivacyError, SiteDataError
from federation.keyholder_api import DecryptRequest
from federation.tags import TAG_SLOTS, TRAILER, QueryLabel, site_tags

TRAIN = QueryLabel(run_id="crypto-run", phase="train", round=1, task="referral_risk")
STATS = QueryLabel(run_id="crypto-run", phase="stats", round=0, task="referral_risk")


def _site_updates(rng: np.random.Generator, n_sites: int, n_params: int):
    thetas = [rng.normal(0, 1, n_params) for _ in range(n_sites)]
    counts = rng.integers(20, 2000, n_sites).astype(float)
    return thetas, counts


@pytest.mark.parametrize("n_params", [17, 5000])  # one ciphertext, and several chunks
def test_encrypted_weighted_average_matches_plaintext(enrolled_key_holder, n_params):
    key_holder, enrolments = enrolled_key_holder(n_sites=5)
    rng = np.random.default_rng(n_params)
    thetas, counts = _site_updates(rng, 5, n_params)
    context = load_public_context(key_holder.public_context)
    weights = counts / counts.sum()
    blobs = [encrypt_contribution(context, np.append(w * t, w), site_key=e.site_key_bytes, label=TRAIN)
             for t, w, e in zip(thetas, weights, enrolments.values())]
    summed = Aggregator(key_holder.public_context).add(blobs, length=n_params + 1, scale_bits=40)
    request = DecryptRequest.of(TRAIN, cohort=list(enrolments), length=n_params + 1, scale_bits=40)
    values = key_holder.decrypt_aggregate(summed, request)
    assert values.size == n_params + 1  # the data only: the trailer stays with the key holder
    encrypted_avg = values[:-1] / values[-1]
    plain_avg = np.average(np.stack(thetas), axis=0, weights=counts)
    assert np.max(np.abs(encrypted_avg - plain_avg)) < 1e-4
    assert values[-1] == pytest.approx(1.0, abs=1e-6)


def test_large_statistics_survive_at_the_statistics_scale(enrolled_key_holder):
    key_holder, enrolments = enrolled_key_holder(n_sites=4)
    context = load_public_context(key_holder.public_context)
    stats = [np.array([300.0, 75_000.0, 6.5e7]) * (i + 1) for i in range(4)]  # count, sum, sum of squares
    blobs = [encrypt_contribution(context, v, site_key=e.site_key_bytes, label=STATS, scale_bits=25)
             for v, e in zip(stats, enrolments.values())]
    summed = Aggregator(key_holder.public_context).add(blobs, length=3, scale_bits=25)
    values = key_holder.decrypt_aggregate(summed, DecryptRequest.of(STATS, cohort=list(enrolments), length=3,
                                                                    scale_bits=25))
    np.testing.assert_allclose(values, np.sum(stats, axis=0), rtol=1e-9, atol=1e-2)


def test_a_contribution_is_the_values_a_contributor_slot_and_the_sites_tags(enrolled_key_holder):
    key_holder, enrolments = enrolled_key_holder(n_sites=1)
    site_key = enrolments["site_0"].site_key_bytes
    values = np.linspace(-2.0, 2.0, 11)
    blob = encrypt_contribution(load_public_context(key_holder.public_context), values, site_key=site_key,
                                label=TRAIN)
    secret = key_holder.state.secret_context()
    decrypted = np.concatenate([np.asarray(ts.ckks_vector_from(secret, c).decrypt()) for c in unpack(blob)])
    assert decrypted.size == values.size + TRAILER
    np.testing.assert_allclose(decrypted[: values.size], values, atol=1e-6)
    assert decrypted[values.size] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(decrypted[values.size + 1 :], site_tags(values, site_key, TRAIN), atol=1e-5)


def test_a_sum_made_for_another_query_is_not_released(enrolled_key_holder):
    # The aggregator replays last round's replies as this round's: the tags are for round 1.
    key_holder, enrolments = enrolled_key_holder(n_sites=3)
    context = load_public_context(key_holder.public_context)
    blobs = [encrypt_contribution(context, np.full(6, 0.1 * i), site_key=e.site_key_bytes, label=TRAIN)
             for i, e in enumerate(enrolments.values())]
    summed = Aggregator(key_holder.public_context).add(blobs, length=6, scale_bits=40)
    replayed = DecryptRequest.of(QueryLabel("crypto-run", "train", 2, "referral_risk"), cohort=list(enrolments),
                                 length=6, scale_bits=40)
    with pytest.raises(AggregateCheckError, match="tags do not match"):
        key_holder.decrypt_aggregate(summed, replayed)


def test_encrypt_vector_takes_exactly_the_tags_and_refuses_non_finite_ones(enrolled_key_holder):
    key_holder, _ = enrolled_key_holder(n_sites=0)
    context = load_public_context(key_holder.public_context)
    with pytest.raises(ValueError, match=f"expected {TAG_SLOTS} tags"):
        encrypt_vector(context, np.ones(3), tags=np.zeros(TAG_SLOTS - 1))
    with pytest.raises(SiteDataError, match="non-finite"):
        encrypt_vector(context, np.ones(3), tags=np.array([0.0, np.inf, 0.0, 0.0]))
    with pytest.raises(SiteDataError, match="non-finite"):  # NaN data spoils the tags too
        encrypt_contribution(context, np.array([1.0, np.nan]), site_key=b"k" * 32, label=TRAIN)


def test_aggregator_context_has_no_secret_key_and_cannot_decrypt(enrolled_key_holder):
    key_holder, _ = enrolled_key_holder(n_sites=0)
    aggregator = Aggregator(key_holder.public_context)
    assert not aggregator.context.has_secret_key()
    assert aggregator.context.is_public()
    blob = encrypt_vector(aggregator.context, np.arange(8.0), tags=np.zeros(TAG_SLOTS))
    ciphertext = ts.ckks_vector_from(aggregator.context, unpack(blob)[0])
    with pytest.raises(ValueError):
        ciphertext.decrypt()


def test_public_context_refuses_a_secret_key():
    secret = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 60])
    with pytest.raises(PrivacyError):
        load_public_context(secret.serialize(save_secret_key=True))


def test_malformed_ciphertext_is_refused(enrolled_key_holder):
    key_holder, _ = enrolled_key_holder(n_sites=0)
    with pytest.raises(PrivacyError):
        Aggregator(key_holder.public_context).add([b"not a ciphertext"])
