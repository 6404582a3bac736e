"""Attack 7: a ciphertext under a foreign key, an inflated weight, a replayed ciphertext.

(a) A site encrypts under another key holder's context (same CKKS parameters, so nothing tells it
apart before decryption). On the old main the key holder's only guard was the contributor slot.
Now the sum's tags must also be exactly the claimed cohort's, so the garbage such a sum decrypts to
is refused by the key holder and never becomes a model.
(b) A site sends ``Enc([w * theta, w])`` with ``w`` ten times its share ``n / N`` while declaring its
true row count: it would get most of the weight of the average (95 % with 3 sites on the old main,
where nothing compared the decrypted weight sum with the declared rows). Now ``EncryptedFedAvg``
checks the decrypted weight sum against the declared rows and refuses the round.
(c) The aggregator keeps a site's round-1 ciphertext and adds it again in round 2 beside two fresh
replies. On the old main nothing bound a ciphertext to its round, so the stale reply counted. Now
tags are bound to (run, phase, round): the key holder refuses the round-2 sum.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from coordinator.aggregator import Aggregator
from coordinator.strategy import EncryptedFedAvg, ReplyScreen
from federation.crypto import encrypt_contribution, load_public_context
from federation.errors import AggregateCheckError, CiphertextError
from keyholder import KeyHolderState
from tests.attacks.conftest import (
    actions,
    add,
    contributions,
    label,
    request,
    site_values,
    train_reply,
)

N_PARAMS = 12
ROWS = {"site_0": 120.0, "site_1": 80.0, "site_2": 200.0}
TOTAL = sum(ROWS.values())


def _strategy(key_holder, public: bytes, run: str) -> EncryptedFedAvg:
    aggregator = Aggregator(public)
    return EncryptedFedAvg(aggregator=aggregator, key_holder=key_holder, n_params=N_PARAMS, total_examples=TOTAL,
                           screen=ReplyScreen(min_sites=3, aggregator=aggregator), label=label(run, round_=0),
                           min_train_nodes=3, min_evaluate_nodes=3, min_available_nodes=3)


def _update(public: bytes, enrolment, run: str, server_round: int, theta: np.ndarray, weight: float) -> bytes:
    """A site's train reply ``Enc([w * theta, w])`` for ``run``, round ``server_round``."""
    return encrypt_contribution(load_public_context(public), np.append(weight * theta, weight),
                                site_key=enrolment.site_key_bytes, label=label(run, round_=server_round))


def _replies(blobs: dict[str, bytes]):
    return [train_reply(node, blob, site=site, rows=ROWS[site]) for node, (site, blob) in enumerate(blobs.items(), 1)]


def test_a_ciphertext_under_another_key_holders_context_is_refused(key_holder_of, tmp_path):
    key_holder, enrolments, public = key_holder_of(n_sites=3, min_sites=3)
    other = KeyHolderState(tmp_path / "another-keyholder")
    other.init()
    query = label("foreign")
    values = site_values(ROWS, N_PARAMS)
    blobs = contributions(public, enrolments, query, {s: values[s] for s in ("site_0", "site_1")})
    # site_2 is enrolled with the real key holder (its tags use its real key) but encrypts under the other one.
    blobs |= contributions(other.public_context(), enrolments, query, {"site_2": values["site_2"]})
    summed = add(public, list(blobs.values()))  # same parameters: the aggregator cannot tell
    with pytest.raises((CiphertextError, AggregateCheckError)):
        key_holder.decrypt_aggregate(summed, request(query, list(blobs), N_PARAMS))
    assert actions(key_holder.state, "decrypt") == []
    assert [e["details"]["query"] for e in actions(key_holder.state, "decrypt-refused")] == [query.once_key]


def test_a_site_claiming_ten_times_its_weight_is_not_adopted(key_holder_of):
    key_holder, enrolments, public = key_holder_of(n_sites=3, min_sites=3)
    thetas = site_values(ROWS, N_PARAMS)
    strategy = _strategy(key_holder, public, "weight")
    weights = {s: n / TOTAL for s, n in ROWS.items()}

    honest = {s: _update(public, enrolments[s], "weight", 1, thetas[s], weights[s]) for s in ROWS}
    arrays, _ = strategy.aggregate_train(1, _replies(honest))  # control: the weighted average
    expected = np.average(np.stack([thetas[s] for s in ROWS]), axis=0, weights=list(ROWS.values()))
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], expected, atol=1e-6)

    greedy = {s: _update(public, enrolments[s], "weight", 2, thetas[s], (10 if s == "site_0" else 1) * weights[s])
              for s in ROWS}
    with pytest.raises(AggregateCheckError, match="weight sum"):
        strategy.aggregate_train(2, _replies(greedy))  # site_0 still declares its true 120 rows


def test_a_ciphertext_replayed_from_an_earlier_round_is_refused(key_holder_of):
    key_holder, enrolments, public = key_holder_of(n_sites=3, min_sites=3)
    thetas = site_values(ROWS, N_PARAMS)
    strategy = _strategy(key_holder, public, "replay")
    weights = {s: n / TOTAL for s, n in ROWS.items()}

    round_1 = {s: _update(public, enrolments[s], "replay", 1, thetas[s], weights[s]) for s in ROWS}
    strategy.aggregate_train(1, _replies(round_1))
    round_2 = {s: _update(public, enrolments[s], "replay", 2, 2 * thetas[s], weights[s]) for s in ("site_1", "site_2")}
    with pytest.raises(AggregateCheckError, match="tags do not match"):
        strategy.aggregate_train(2, _replies({"site_0": round_1["site_0"], **round_2}))
    assert [e["details"]["query"] for e in actions(key_holder.state, "decrypt")] == [
        replace(strategy.label, round=1).once_key]
