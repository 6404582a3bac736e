"""Attack 2: a site sets its own contributor slot to 2.

The decrypted contributor slot was the old key holder's only count of the sites in a sum. A site
that encrypted ``[its data, 2.0]`` instead of ``[its data, 1.0]`` made a sum of 2 replies read 3:
with 2 sites and min-sites 3 the old key holder decrypted it, and the honest site's update came out
exactly (the forger subtracts its own; error 2.8e-8). Now the key holder counts the cohort the
aggregator names (at least min-sites distinct enrolled sites, checked before decrypting) and checks
the sum's tags against exactly that cohort: a cohort of 2 is refused outright, and a cohort of 3
that names an enrolled site which sent nothing fails the tag check (that site's secret offsets are
missing), so nothing is released either way.
"""

from __future__ import annotations

import numpy as np
import pytest

from federation.tags import site_tags
from keyholder.errors import AggregateCheckError, NotEnoughSitesError
from tests.attacks.conftest import (
    actions,
    add,
    contributions,
    encrypt_raw,
    label,
    request,
    site_values,
)

LENGTH = 8


@pytest.mark.parametrize("cohort, refusal, says", [
    (["site_0", "site_1"], NotEnoughSitesError, "at least 3"),
    (["site_0", "site_1", "site_2"], AggregateCheckError, "tags do not match"),  # site_2 enrolled, sent nothing
])
def test_a_site_that_counts_itself_twice_gets_nothing_decrypted(key_holder_of, cohort, refusal, says):
    key_holder, enrolments, public = key_holder_of(n_sites=3, min_sites=3)
    query = label(f"forged-slot-{len(cohort)}")
    values = site_values(["site_0", "site_1"], LENGTH)
    honest = contributions(public, enrolments, query, {"site_0": values["site_0"]})["site_0"]
    forger_data = values["site_1"]
    forged = encrypt_raw(public, [*forger_data, 2.0,
                                  *site_tags(forger_data, enrolments["site_1"].site_key_bytes, query)])
    summed = add(public, [honest, forged])  # contributor slot reads 3

    with pytest.raises(refusal, match=says):
        key_holder.decrypt_aggregate(summed, request(query, cohort, LENGTH))
    assert actions(key_holder.state, "decrypt") == []
    [refused] = [e for e in key_holder.state.ledger.entries() if e["action"] in ("refused", "decrypt-refused")]
    assert refused["details"]["error"] == refusal.__name__


def test_control_the_honest_three_site_sum_decrypts(key_holder_of):
    key_holder, enrolments, public = key_holder_of(n_sites=3, min_sites=3)
    query = label("honest")
    values = site_values(enrolments, LENGTH)
    blobs = contributions(public, enrolments, query, values)
    decrypted = key_holder.decrypt_aggregate(add(public, list(blobs.values())), request(query, list(blobs), LENGTH))
    np.testing.assert_allclose(decrypted, sum(values.values()), atol=1e-6)
