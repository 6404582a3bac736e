"""Packed model updates (issue 17): fixed-point lanes in BFV, decrypted by the real key holder.

The decrypted aggregate equals the plaintext weighted average within the documented error
(``max_error``) at the largest site count the benchmark reports (300); overflow is impossible by
construction (a site refuses values beyond the bound, the key holder refuses weights that sum above
1); the exact tags refuse a sum that is not the claimed cohort's.
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.aggregator import Aggregator
from federation.crypto import encrypt_vector, unpack
from federation.errors import AggregateCheckError, CiphertextError, SiteDataError
from federation.keyholder_api import DecryptRequest
from federation.packing import (
    PackedContext,
    encrypt_packed,
    load_packed_context,
    max_error,
    packing_bound,
    step_of,
)
from federation.tags import QueryLabel

SITES = 300
N_PARAMS = 301  # odd: the last lane holds one value


@pytest.fixture(scope="module")
def big_federation(tmp_path_factory):
    """A real key holder with SITES enrolled sites (enrolling is cheap; encrypting is the cost)."""
    from keyholder import KeyHolder, KeyHolderState

    state = KeyHolderState(tmp_path_factory.mktemp("packed") / "keyholder")
    state.init()
    enrolments = {f"site_{i:03d}": state.enrol(f"site_{i:03d}", f"INST-{i:03d}") for i in range(SITES)}
    return KeyHolder(state, min_sites=3), enrolments


def _label(run: str) -> QueryLabel:
    return QueryLabel(run_id=run, phase="train", round=1, task="referral_risk", inputs="ab" * 32)


def _replies(key_holder, enrolments, thetas, weights, bound, label, sites=None):
    context = load_packed_context(key_holder.packed_public_context)
    sites = sites or list(enrolments)
    return {site: encrypt_packed(context, weights[i] * thetas[i], weight=float(weights[i]), bound=bound,
                                 site_key=enrolments[site].site_key_bytes, label=label)
            for i, site in enumerate(sites)}


def _decrypt(key_holder, blobs, cohort, label, bound, length=N_PARAMS + 1):
    aggregator = Aggregator(key_holder.public_context, key_holder.packed_public_context)
    running = aggregator.running(length=length, packed=True)
    for blob in blobs:
        running.add(blob)
    request = DecryptRequest.of(label, cohort=cohort, length=length, scale_bits=40, scheme="packed", bound=bound)
    return key_holder.decrypt_aggregate(running.serialize(), request)


def test_the_packed_sum_is_the_weighted_average_within_the_documented_error(big_federation):
    key_holder, enrolments = big_federation
    rng = np.random.default_rng(0)
    bound = 8.0
    # Values right up to the bound, in both signs: the lanes' worst case.
    thetas = rng.uniform(-bound, bound, (SITES, N_PARAMS))
    thetas[:, :4] = [bound, -bound, bound, -bound]
    rows = rng.integers(10, 2000, SITES)
    weights = rows / rows.sum()
    label = _label("packed-average")
    blobs = _replies(key_holder, enrolments, thetas, weights, bound, label)
    values = _decrypt(key_holder, blobs.values(), list(blobs), label, bound)

    expected = weights @ thetas
    error = np.abs(values[:N_PARAMS] - expected)
    assert error.max() <= max_error(bound, SITES)
    assert error.max() > 0  # fixed point: rounding is real, and the budget is what bounds it
    assert abs(values[N_PARAMS] - 1.0) <= SITES * 2.0**-24
    # The budget is the worst case; in practice rounding errors cancel (about step * sqrt(S / 6)).
    assert error.mean() < 2 * step_of(bound) * np.sqrt(SITES / 6)


def test_changes_below_half_a_step_still_reach_the_sum(big_federation):
    """Each site's weighted change is 0.2 steps, as 1/300 of a small change is: rounding to the nearest sent
    0 from every site and the sum lost the change (packed training lost AUROC at 300 clinics);
    stochastic rounding is unbiased, so the sum holds 0.2 * S steps within its noise."""
    key_holder, enrolments = big_federation
    bound = 0.5
    step = step_of(bound)
    weights = np.full(SITES, 1.0 / SITES)
    changes = np.tile(np.linspace(0.05, 0.45, N_PARAMS), (SITES, 1)) * step * SITES  # w * change: 0.05-0.45 step
    label = _label("packed-small-changes")
    blobs = _replies(key_holder, enrolments, changes, weights, bound, label)
    values = _decrypt(key_holder, blobs.values(), list(blobs), label, bound)
    expected = weights @ changes  # 15 to 135 steps
    sd = step * np.sqrt(SITES / 4)  # each site's rounding: a Bernoulli step, variance at most step^2 / 4
    assert np.all(np.abs(values[:N_PARAMS] - expected) < 5 * sd)
    assert abs(float(np.mean(values[:N_PARAMS] - expected))) < 5 * sd / np.sqrt(N_PARAMS)  # unbiased


def test_a_site_refuses_values_beyond_the_bound_and_weights_outside_0_1(big_federation):
    key_holder, enrolments = big_federation
    context = load_packed_context(key_holder.packed_public_context)
    key = enrolments["site_000"].site_key_bytes
    label = _label("packed-refusals")
    with pytest.raises(SiteDataError, match="packing bound"):
        encrypt_packed(context, 0.5 * np.array([8.5, 0.0]), weight=0.5, bound=8.0, site_key=key, label=label)
    with pytest.raises(SiteDataError, match=r"\[0, 1\]"):
        encrypt_packed(context, np.zeros(2), weight=1.5, bound=8.0, site_key=key, label=label)
    with pytest.raises(SiteDataError, match="non-finite"):
        encrypt_packed(context, np.array([np.nan, 0.0]), weight=0.5, bound=8.0, site_key=key, label=label)


def test_inflated_weights_are_refused_before_a_lane_is_read(big_federation):
    """A coordinator that sends a smaller total row count inflates every site's weight: sums of lanes
    could then overflow. The sites still encrypt (each weight is ≤ 1), the key holder refuses."""
    key_holder, enrolments = big_federation
    sites = list(enrolments)[:3]
    thetas = np.full((3, N_PARAMS), 8.0)
    weights = np.array([0.9, 0.9, 0.9])
    label = _label("packed-inflated")
    blobs = _replies(key_holder, enrolments, thetas, weights, 8.0, label, sites=sites)
    with pytest.raises(AggregateCheckError, match="weights sum"):
        _decrypt(key_holder, blobs.values(), sites, label, 8.0)
    assert key_holder.state.ledger.entries()[-1]["action"] == "decrypt-refused"


@pytest.mark.parametrize("attack", ["left out", "added twice", "another query"])
def test_exact_tags_refuse_a_sum_that_is_not_the_claimed_cohort(big_federation, attack):
    key_holder, enrolments = big_federation
    sites = list(enrolments)[10:14]
    rng = np.random.default_rng(1)
    thetas, weights = rng.uniform(-1, 1, (4, N_PARAMS)), np.full(4, 0.25)
    label = _label(f"packed-{attack}")
    blobs = _replies(key_holder, enrolments, thetas, weights, 8.0, label, sites=sites)
    summed, cohort = list(blobs.values()), list(sites)
    if attack == "left out":  # the coordinator drops a site but claims all four
        summed = summed[:3]
    elif attack == "added twice":  # one site's reply twice, in place of another's
        summed = [summed[0], summed[0], summed[1], summed[2]]
    else:  # a reply made for another query
        other = _replies(key_holder, enrolments, thetas, weights, 8.0, _label("packed-other"), sites=sites)
        summed = [*summed[:3], other[sites[3]]]
    with pytest.raises(AggregateCheckError):
        _decrypt(key_holder, summed, cohort, label, 8.0)


def test_a_ckks_reply_is_not_a_packed_one(big_federation):
    key_holder, _ = big_federation
    aggregator = Aggregator(key_holder.public_context, key_holder.packed_public_context)
    ckks = encrypt_vector(aggregator.context, np.zeros(N_PARAMS + 1), tags=np.zeros(4))
    with pytest.raises(CiphertextError):
        aggregator.running(length=N_PARAMS + 1, packed=True).add(ckks)


def test_the_bound_follows_the_model_and_is_a_power_of_two():
    assert packing_bound(np.array([5.0, -11.0])) == 32.0  # twice the largest, rounded up
    # No floor of 8 (it set a step of 1.2e-4 on an MLP whose weights are below 0.25: packed training lost
    # AUROC at 300 clinics): a small model gets a fine step.
    assert packing_bound(np.array([0.1, -0.2])) == 0.5
    assert packing_bound(np.zeros(3)) == 8.0  # all zero (round 1 of a zero-initialised model): nothing to scale by
    assert packing_bound(np.array([1e-9])) == 2.0**-4  # never below 2^-4
    assert step_of(8.0) == 8.0 / 2**16


def test_the_ring_follows_the_vector_length():
    """Large ciphertexts while the rest does not fit in a small one, then one small one: a 1k-parameter
    model pays for 4,096 slots, not 8,192, and a long vector's tail half the bytes of a full chunk."""
    from federation.packing import make_packed_context

    rings = make_packed_context()
    sizes = lambda total: [(8192 if ring is rings.large else 4096, n) for ring, n in rings.plan(total)]
    assert sizes(506) == [(4096, 506)]
    assert sizes(4096) == [(4096, 4096)]
    assert sizes(4097) == [(8192, 4097)]
    assert sizes(8192 * 6 + 100) == [(8192, 8192)] * 6 + [(4096, 100)]
    assert sizes(8192 * 2 + 5000) == [(8192, 8192), (8192, 8192), (8192, 5000)]
    legacy = PackedContext(rings.large)  # a key holder made before the small ring: all large
    assert [n for _, n in legacy.plan(9000)] == [8192, 808]


def test_a_vector_across_both_rings_sums_exactly_and_small_chunks_are_half_the_bytes(big_federation):
    key_holder, enrolments = big_federation
    sites = list(enrolments)[20:24]
    n_params = 2 * 8192 + 301  # one full large chunk, then a small one for the tail and the trailer
    rng = np.random.default_rng(2)
    thetas, weights = rng.uniform(-8, 8, (4, n_params)), np.array([0.1, 0.2, 0.3, 0.4])
    label = _label("packed-two-rings")
    blobs = _replies(key_holder, enrolments, thetas, weights, 8.0, label, sites=sites)
    chunks = unpack(next(iter(blobs.values())))
    assert len(chunks) == 2 and len(chunks[1]) < 0.6 * len(chunks[0])
    values = _decrypt(key_holder, blobs.values(), sites, label, 8.0, length=n_params + 1)
    assert np.abs(values[:n_params] - weights @ thetas).max() <= max_error(8.0, 4)


def test_a_chunk_in_the_wrong_ring_is_refused(big_federation):
    key_holder, enrolments = big_federation
    site = list(enrolments)[30]
    context = load_packed_context(key_holder.packed_public_context)
    label = _label("packed-wrong-ring")
    honest = encrypt_packed(context, 0.5 * np.ones(N_PARAMS), weight=0.5, bound=8.0,
                            site_key=enrolments[site].site_key_bytes, label=label)
    large_only = encrypt_packed(PackedContext(context.large), 0.5 * np.ones(N_PARAMS), weight=0.5, bound=8.0,
                                site_key=enrolments[site].site_key_bytes, label=label)
    assert len(large_only) > 1.6 * len(honest)
    aggregator = Aggregator(key_holder.public_context, key_holder.packed_public_context)
    aggregator.running(length=N_PARAMS + 1, packed=True).add(honest)
    with pytest.raises(CiphertextError):
        aggregator.running(length=N_PARAMS + 1, packed=True).add(large_only)


def test_packed_contexts_refuse_secret_keys_and_other_schemes(big_federation):
    key_holder, _ = big_federation
    from federation.errors import PrivacyError
    from federation.packing import make_packed_context

    with pytest.raises(PrivacyError, match="secret key"):
        load_packed_context(make_packed_context().serialize(secret=True))
    with pytest.raises(CiphertextError, match="BFV"):
        load_packed_context(key_holder.public_context)  # the CKKS one
    single = load_packed_context(key_holder.packed_public_context).large.serialize(save_secret_key=False)
    assert load_packed_context(single).small is None  # a key holder's lone large ring still loads
