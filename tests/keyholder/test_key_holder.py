"""The key holder's rules, called directly: it decrypts a sum only over enough distinct enrolled
sites, once per query, only when the sum is exactly the claimed cohort's, and it records every
request in its ledger; its secrets are readable by its owner only."""

from __future__ import annotations

import stat

import numpy as np
import pytest

from coordinator.aggregator import Aggregator
from federation.crypto import encrypt_contribution, load_public_context
from federation.keyholder_api import DecryptRequest
from federation.tags import QueryLabel
from keyholder.errors import (
    AggregateCheckError,
    CohortError,
    NotEnoughSitesError,
    ReplayError,
)

LENGTH = 6


def _label(run: str, round_: int = 1, task: str = "referral_risk") -> QueryLabel:
    return QueryLabel(run_id=run, phase="train", round=round_, task=task)


def _sum(key_holder, enrolments, label, senders, values=None):
    """The encrypted sum of the replies of ``senders`` (site ids, repeats allowed) to ``label``."""
    context = load_public_context(key_holder.public_context)
    values = values or {s: np.arange(LENGTH, dtype=float) * (i + 1) for i, s in enumerate(enrolments)}
    blobs = [encrypt_contribution(context, values[s], site_key=enrolments[s].site_key_bytes, label=label)
             for s in senders]
    return Aggregator(key_holder.public_context).add(blobs), values


def _request(label, cohort, length=LENGTH):
    return DecryptRequest.of(label, cohort=cohort, length=length, scale_bits=40)


def test_decrypts_an_honest_sum_over_min_sites(enrolled_key_holder):
    key_holder, enrolments = enrolled_key_holder(n_sites=3, min_sites=3)
    label, cohort = _label("honest"), list(enrolments)
    blob, values = _sum(key_holder, enrolments, label, cohort)
    decrypted = key_holder.decrypt_aggregate(blob, _request(label, cohort), caller="coord")
    np.testing.assert_allclose(decrypted, sum(values.values()), atol=1e-6)
    granted = key_holder.state.ledger.entries()[-1]
    assert granted["action"] == "decrypt" and granted["actor"] == "coord"
    assert granted["details"]["query"] == label.once_key and granted["details"]["cohort"] == sorted(cohort)


def test_refuses_fewer_than_min_sites_and_records_why(enrolled_key_holder):
    key_holder, enrolments = enrolled_key_holder(n_sites=3, min_sites=3)
    label, cohort = _label("two"), ["site_0", "site_1"]
    blob, _ = _sum(key_holder, enrolments, label, cohort)
    with pytest.raises(NotEnoughSitesError):
        key_holder.decrypt_aggregate(blob, _request(label, cohort), caller="coord")
    refused = key_holder.state.ledger.entries()[-1]
    assert refused["action"] == "refused" and refused["details"]["error"] == "NotEnoughSitesError"
    assert "at least 3" in refused["details"]["reason"]


def test_refuses_a_site_it_never_enrolled(enrolled_key_holder):
    key_holder, enrolments = enrolled_key_holder(n_sites=3, min_sites=3)
    label = _label("unknown")
    blob, _ = _sum(key_holder, enrolments, label, list(enrolments))
    with pytest.raises(CohortError, match="not enrolled"):
        key_holder.decrypt_aggregate(blob, _request(label, ["site_0", "site_1", "site_9"]))
    assert key_holder.state.ledger.entries()[-1]["details"]["error"] == "CohortError"


def test_refuses_a_cohort_that_names_a_site_twice(enrolled_key_holder):
    key_holder, enrolments = enrolled_key_holder(n_sites=3, min_sites=3)
    label, cohort = _label("twice"), ["site_0", "site_0", "site_1"]
    blob, _ = _sum(key_holder, enrolments, label, cohort)  # site_0's reply really added twice
    with pytest.raises(CohortError, match="more than once"):
        key_holder.decrypt_aggregate(blob, _request(label, cohort))


def test_refuses_a_sum_that_is_not_the_claimed_cohorts(enrolled_key_holder):
    key_holder, enrolments = enrolled_key_holder(n_sites=3, min_sites=3)
    label = _label("forged")
    blob, _ = _sum(key_holder, enrolments, label, ["site_0", "site_0", "site_0"])  # one site, counted 3 times
    with pytest.raises(AggregateCheckError):
        key_holder.decrypt_aggregate(blob, _request(label, list(enrolments)))
    assert key_holder.state.ledger.entries()[-1]["action"] == "decrypt-refused"
    honest, _ = _sum(key_holder, enrolments, label, list(enrolments))
    with pytest.raises(ReplayError):  # a refusal after decryption consumes the query: no second try
        key_holder.decrypt_aggregate(honest, _request(label, list(enrolments)))


def test_refuses_to_decrypt_the_same_query_twice(enrolled_key_holder):
    key_holder, enrolments = enrolled_key_holder(n_sites=3, min_sites=3)
    label, cohort = _label("replay"), list(enrolments)
    blob, _ = _sum(key_holder, enrolments, label, cohort)
    key_holder.decrypt_aggregate(blob, _request(label, cohort))
    with pytest.raises(ReplayError):
        key_holder.decrypt_aggregate(blob, _request(label, cohort))
    actions = [e["action"] for e in key_holder.state.ledger.entries()]
    assert actions[-2:] == ["decrypt", "refused"]


def test_refuses_a_cohort_that_differs_from_an_earlier_one_by_too_few_sites(enrolled_key_holder):
    key_holder, enrolments = enrolled_key_holder(n_sites=4, min_sites=3)
    first, second = _label("diff", round_=1), _label("diff", round_=2)
    blob, _ = _sum(key_holder, enrolments, first, ["site_0", "site_1", "site_2"])
    key_holder.decrypt_aggregate(blob, _request(first, ["site_0", "site_1", "site_2"]))
    all_four = list(enrolments)
    blob, _ = _sum(key_holder, enrolments, second, all_four)
    with pytest.raises(CohortError, match="differencing"):
        key_holder.decrypt_aggregate(blob, _request(second, all_four))


def test_secrets_are_readable_by_the_key_holder_only(enrolled_key_holder):
    key_holder, _ = enrolled_key_holder(n_sites=3)
    key_holder.state.issue_token("coord")
    home = key_holder.state.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for name in ("secret-context.bin", "signing-key.pem", "enrolments.json", "tokens.json"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
