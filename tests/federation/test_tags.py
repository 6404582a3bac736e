"""The tags bind each encrypted vector to its site, its data and one query: an honest sum passes the
key holder's check, and every slot-wise trick the aggregator can play on ciphertexts fails it.

Honest sums are real TenSEAL sums where that is cheap. The CKKS noise a sum carries is measured
here, slot by slot, on this context's own ciphertexts: it differs widely between slots (the key's
embedding), so a model with one average figure would not show whether the tolerance holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.aggregator import Aggregator
from federation.crypto import (
    CKKSParams,
    encrypt_contribution,
    load_public_context,
    unpack,
)
from federation.errors import AggregateCheckError
from federation.tags import (
    OFFSET_RANGE,
    TAG_SLOTS,
    QueryLabel,
    check_tags,
    mac_vectors,
    offsets,
    site_tags,
    tag_tolerance,
)

LABEL = QueryLabel(run_id="run-7", phase="train", round=3, task="referral_risk")
# One label per field it can differ in: a reply made for any of them is another query's.
OTHER_LABELS = {
    "run_id": replace(LABEL, run_id="run-8"),
    "phase": replace(LABEL, phase="stats"),
    "round": replace(LABEL, round=4),
    "task": replace(LABEL, task="sepsis_risk"),
    "dp_epsilon": replace(LABEL, dp_epsilon=1.0),
}


@dataclass(frozen=True)
class Ckks:
    secret: ts.Context
    public: bytes
    noise_units: np.ndarray  # per-slot std of one fresh ciphertext's error, in units of 2^-scale

    @property
    def slots(self) -> int:
        return self.noise_units.size


@pytest.fixture(scope="module")
def ckks() -> Ckks:
    params = CKKSParams()
    secret = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=params.poly_modulus_degree,
                        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    secret.global_scale = 2**params.scale_bits
    public = secret.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                              save_relin_keys=False)
    context, rng, errors = load_public_context(public), np.random.default_rng(0), []
    for _ in range(48):  # enough for each slot's spread to within about 10 %
        values = rng.normal(0, 1, params.slots)
        sent = ts.ckks_vector(context, values.tolist()).serialize()  # public-key encryption, as a site's
        errors.append((np.asarray(ts.ckks_vector_from(secret, sent).decrypt()) - values) * 2.0**params.scale_bits)
    return Ckks(secret, public, np.sqrt(np.mean(np.square(errors), axis=0)))


def _sites(rng: np.random.Generator, n: int, length: int, *, away_from_zero: bool = False):
    keys = [rng.bytes(32) for _ in range(n)]
    if away_from_zero:  # so masking any one value out moves the check well past its tolerance
        values = [rng.choice([-1.0, 1.0], length) * rng.uniform(0.5, 5.0, length) for _ in range(n)]
    else:
        values = [rng.normal(0, 2.0, length) for _ in range(n)]
    return keys, values


def _noisy(plain: np.ndarray, ckks: Ckks, *, sites: int, scale_bits: int, rng: np.random.Generator) -> np.ndarray:
    """``plain`` with the noise a sum of ``sites`` fresh ciphertexts carries: independent per site, so its
    variance adds up; position p sits in slot p mod slots of its chunk."""
    spread = ckks.noise_units[np.arange(plain.size) % ckks.slots] * 2.0**-scale_bits * math.sqrt(sites)
    return plain + rng.normal(0, 1, plain.size) * spread


def _real_sum(ckks: Ckks, keys, values, *, scale_bits: int, label: QueryLabel = LABEL) -> np.ndarray:
    context = load_public_context(ckks.public)
    blobs = [encrypt_contribution(context, v, site_key=k, label=label, scale_bits=scale_bits)
             for k, v in zip(keys, values)]
    summed = Aggregator(ckks.public).add(blobs, length=values[0].size, scale_bits=scale_bits)
    return np.concatenate([np.asarray(ts.ckks_vector_from(ckks.secret, c).decrypt()) for c in unpack(summed)])


def _plain_sum(keys, values, labels=None) -> np.ndarray:
    """What an honest sum decrypts to without noise: data, contributor slot, tags.

    Each site's tags are ``site_tags`` (see the last test) with ``mac_vectors`` made once per label:
    at 100,000 values, making them for every site would take seconds.
    """
    labels = labels or [LABEL] * len(keys)
    macs = {label: mac_vectors(label, values[0].size) for label in set(labels)}
    tags = sum(macs[lab] @ v + offsets(k, lab) for k, v, lab in zip(keys, values, labels))
    return np.concatenate([np.sum(values, axis=0), [float(len(keys))], tags])


def _check(decrypted: np.ndarray, keys, *, length: int, scale_bits: int, label: QueryLabel = LABEL) -> None:
    check_tags(decrypted[:length], decrypted[length + 1 :], site_keys=keys, label=label, scale_bits=scale_bits)


CASES = [(17, 3, 40), (5000, 10, 40), (200, 300, 25), (100_000, 100, 40)]


@pytest.mark.parametrize(("length", "sites", "scale_bits"), CASES)
def test_an_honest_sum_passes_the_check(ckks, length, sites, scale_bits):
    rng = np.random.default_rng(length + sites)
    keys, values = _sites(rng, sites, length)
    if sites * length <= 50_000:
        decrypted = _real_sum(ckks, keys, values, scale_bits=scale_bits)
    else:
        # 300 or 2,500 public-key encryptions would take seconds: the plain sum plus Gaussian noise
        # of the spread measured on this context's real ciphertexts, slot by slot.
        decrypted = _noisy(_plain_sum(keys, values), ckks, sites=sites, scale_bits=scale_bits, rng=rng)
    assert decrypted.size == length + 1 + TAG_SLOTS
    assert decrypted[length] == pytest.approx(sites, abs=0.01)  # the contributor slot
    _check(decrypted, keys, length=length, scale_bits=scale_bits)
    with pytest.raises(AggregateCheckError):  # so passing says something: one key short fails
        _check(decrypted, keys[1:], length=length, scale_bits=scale_bits)


@pytest.mark.parametrize(("length", "sites", "scale_bits"), CASES)
def test_the_tolerance_covers_the_measured_noise_with_room_to_spare(ckks, length, sites, scale_bits):
    # The check's error for tag k: sum_j a_kj * noise_j (data slots) minus the tag slot's own noise.
    a = mac_vectors(LABEL, length)
    data_var = (a**2) @ ckks.noise_units[np.arange(length) % ckks.slots] ** 2
    tag_slots = np.arange(length + 1, length + 1 + TAG_SLOTS) % ckks.slots
    unit = 2.0**-scale_bits * math.sqrt(sites)
    tolerance = tag_tolerance(length=length, sites=sites, scale_bits=scale_bits)
    actual = np.sqrt(data_var + ckks.noise_units[tag_slots] ** 2) * unit
    average_slot = np.sqrt(data_var + np.mean(ckks.noise_units**2)) * unit
    noisiest_slot = np.sqrt(data_var + np.max(ckks.noise_units) ** 2) * unit
    assert np.all(tolerance >= 10 * average_slot)  # the module's claim, for a tag in a slot of average noise
    assert np.all(tolerance >= 4 * noisiest_slot)  # a tag in the noisiest slot this key has
    assert np.all(tolerance >= 4 * actual)


@settings(max_examples=25, deadline=None)
@given(
    attack=st.sampled_from(["drop a site", "count a site twice", "another label's tags", "mask one value"]),
    n_sites=st.integers(3, 8),
    length=st.integers(1, 300),
    scale_bits=st.sampled_from([25, 40]),
    other=st.sampled_from(sorted(OTHER_LABELS)),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_a_tampered_sum_fails_the_check(ckks, attack, n_sites, length, scale_bits, other, seed, data):
    rng = np.random.default_rng(seed)
    keys, values = _sites(rng, n_sites, length, away_from_zero=True)
    victim = data.draw(st.integers(0, n_sites - 1), label="victim")
    honest = _noisy(_plain_sum(keys, values), ckks, sites=n_sites, scale_bits=scale_bits, rng=rng)
    _check(honest, keys, length=length, scale_bits=scale_bits)  # the same sites, untouched, pass
    if attack == "drop a site":
        kept = [i for i in range(n_sites) if i != victim]
        plain = _plain_sum([keys[i] for i in kept], [values[i] for i in kept])
    elif attack == "count a site twice":
        plain = _plain_sum([*keys, keys[victim]], [*values, values[victim]])
    elif attack == "another label's tags":  # a replay from another query, or a claim of noise not added
        labels = [OTHER_LABELS[other] if i == victim else LABEL for i in range(n_sites)]
        plain = _plain_sum(keys, values, labels)
    else:  # the aggregator multiplied the victim's ciphertext by a mask that zeroes slot j
        j = data.draw(st.integers(0, length - 1), label="slot")
        plain = _plain_sum(keys, values)
        plain[j] -= values[victim][j]
    forged = _noisy(plain, ckks, sites=n_sites, scale_bits=scale_bits, rng=rng)
    with pytest.raises(AggregateCheckError, match="do not match"):
        _check(forged, keys, length=length, scale_bits=scale_bits)


def test_a_real_reply_made_for_another_query_fails_the_check(ckks):
    rng = np.random.default_rng(5)
    keys, values = _sites(rng, 3, 40)
    for other in OTHER_LABELS.values():
        decrypted = _real_sum(ckks, keys, values, scale_bits=40, label=other)
        _check(decrypted, keys, length=40, scale_bits=40, label=other)
        with pytest.raises(AggregateCheckError):
            _check(decrypted, keys, length=40, scale_bits=40)


def test_non_finite_tags_fail_the_check():
    values = np.ones(5)
    tags = site_tags(values, b"k" * 32, LABEL)
    tags[2] = np.nan
    with pytest.raises(AggregateCheckError):
        check_tags(values, tags, site_keys=[b"k" * 32], label=LABEL, scale_bits=40)


def test_the_tolerance_grows_with_length_and_sites_and_shrinks_with_scale():
    base = tag_tolerance(length=100, sites=5, scale_bits=40)
    assert tag_tolerance(length=10_000, sites=5, scale_bits=40) > base
    assert tag_tolerance(length=100, sites=50, scale_bits=40) > base
    assert tag_tolerance(length=100, sites=5, scale_bits=25) > base
    assert tag_tolerance(length=100, sites=5, scale_bits=45) < base
    # Far below the offsets' range, or guessing an offset would be easy.
    assert tag_tolerance(length=100_000, sites=300, scale_bits=25) < OFFSET_RANGE * 1e-3


def test_offsets_differ_between_sites_and_labels_and_are_the_same_for_the_same_pair():
    keys = [bytes([i]) * 32 for i in range(3)]
    labels = [LABEL, *OTHER_LABELS.values()]
    seen = {}
    for key in keys:
        for label in labels:
            b = offsets(key, label)
            assert b.shape == (TAG_SLOTS,) and np.all(np.abs(b) <= OFFSET_RANGE)
            np.testing.assert_array_equal(b, offsets(key, replace(label)))
            seen[key, label] = b
    pairs = list(seen)
    for i, first in enumerate(pairs):
        for second in pairs[i + 1 :]:
            assert not np.any(seen[first] == seen[second]), (first[1], second[1])


def test_mac_vectors_are_the_same_for_the_same_label_and_differ_between_labels():
    a = mac_vectors(LABEL, 300)
    assert a.shape == (TAG_SLOTS, 300)
    assert np.all((np.abs(a) >= 0.25) & (np.abs(a) <= 0.5))
    assert (a > 0).any() and (a < 0).any()
    np.testing.assert_array_equal(a, mac_vectors(QueryLabel("run-7", "train", 3, "referral_risk"), 300))
    for field, other in OTHER_LABELS.items():
        if field == "dp_epsilon":
            # The public a is common to the cohort; each site binds its own epsilon into its offsets.
            np.testing.assert_array_equal(a, mac_vectors(other, 300))
        else:
            assert not np.allclose(a, mac_vectors(other, 300))


def test_site_tags_are_the_public_mac_of_the_values_plus_the_secret_offset():
    values = np.linspace(-1, 1, 9)
    key = b"s" * 32
    np.testing.assert_allclose(site_tags(values, key, LABEL), mac_vectors(LABEL, 9) @ values + offsets(key, LABEL))
