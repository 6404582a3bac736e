"""Attack 3: the aggregator inflates the contributor count of one site's ciphertext.

The aggregator holds the public key, so it can encrypt anything and add it. On the old main it
added ``Enc([0…, 1])`` twice to site_0's ciphertext (or added site_0's ciphertext three times and
divided by 3): the contributor slot read 3, the old key holder checked that slot against the
aggregator's own claim of 3 replies, and decrypted a single site's update. Now every reply carries
tags bound to its site and the query, and the key holder checks the decrypted tags against the
cohort the aggregator claims: ``Enc(0)`` carries no site's secret offsets and a tripled reply
carries site_0's three times, so both fail the check and nothing is released. An honest sum of the
same three sites, in a fresh query, still decrypts.
"""

from __future__ import annotations

import numpy as np
import pytest

from keyholder.errors import AggregateCheckError
from tests.attacks.conftest import (
    add,
    contributions,
    decrypted_queries,
    label,
    request,
    site_values,
    zero_with_slot,
)

LENGTH = 10
COHORT = ["site_0", "site_1", "site_2"]


@pytest.mark.parametrize("trick", ["site_0 + Enc(0) + Enc(0)", "site_0 three times"])
def test_a_single_sites_update_dressed_up_as_three_is_refused(key_holder_of, trick):
    key_holder, enrolments, public = key_holder_of(n_sites=3, min_sites=3)
    values = site_values(COHORT, LENGTH)

    attacked = label("inflated")
    site_0 = contributions(public, enrolments, attacked, {"site_0": values["site_0"]})["site_0"]
    if trick == "site_0 + Enc(0) + Enc(0)":
        summed = add(public, [site_0, zero_with_slot(public, LENGTH), zero_with_slot(public, LENGTH)])
    else:
        summed = add(public, [site_0, site_0, site_0])
    with pytest.raises(AggregateCheckError, match="tags do not match"):
        key_holder.decrypt_aggregate(summed, request(attacked, COHORT, LENGTH))
    assert decrypted_queries(key_holder.state) == []

    # Control: the honest sum of the same three sites, in a fresh query, is released.
    fresh = label("honest")
    blobs = contributions(public, enrolments, fresh, values)
    decrypted = key_holder.decrypt_aggregate(add(public, list(blobs.values())), request(fresh, COHORT, LENGTH))
    np.testing.assert_allclose(decrypted, sum(values.values()), atol=1e-6)
    assert decrypted_queries(key_holder.state) == [fresh.once_key]
