"""Attack 4: leave-one-out (differencing within a federation).

With n >= min-sites + 1 sites, the aggregator holds every site's reply to one query and may add any
subset. On the old main it asked the key holder for the full sum and then for each sum that leaves
one site out: every one covered at least min-sites sites, so all were decrypted, and the full sum
minus each leave-one-out sum is that site's update. Now the key holder decrypts at most one sum per
(run, phase, round), so a second subset of the same query is a replay; and its cohort ledger refuses
a later cohort of the same kind of query (task and phase) that differs from a granted one by fewer
than min-sites sites, since the difference of the two sums would be about those sites alone. The
exception is a release the *sites* noised with differential privacy: the label says so and the
sites' tags bind it, so a coordinator that merely claims DP fails the tag check.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from federation.tags import QueryLabel
from keyholder.errors import AggregateCheckError, CohortError, ReplayError
from tests.attacks.conftest import (
    actions,
    add,
    contributions,
    decrypted_queries,
    label,
    request,
    site_values,
)

LENGTH = 6
SITES = ["site_0", "site_1", "site_2", "site_3"]


def _sum(public, blobs, cohort):
    return add(public, [blobs[s] for s in cohort])


def test_leave_one_out_sums_are_refused_unless_the_sites_add_dp_noise(key_holder_of):
    key_holder, enrolments, public = key_holder_of(n_sites=4, min_sites=3)
    values = site_values(SITES, LENGTH)

    # Round 1: the full sum is granted.
    round_1 = label("loo", round_=1)
    blobs = contributions(public, enrolments, round_1, values)
    full = key_holder.decrypt_aggregate(_sum(public, blobs, SITES), request(round_1, SITES, LENGTH))
    np.testing.assert_allclose(full, sum(values.values()), atol=1e-6)

    # The same query, each three-site subset: one decryption per (run, phase, round).
    subsets = [list(c) for c in itertools.combinations(SITES, 3)]
    for subset in subsets:
        with pytest.raises(ReplayError):
            key_holder.decrypt_aggregate(_sum(public, blobs, subset), request(round_1, subset, LENGTH))

    # The next round, sites re-encrypt under the new label: a cohort one site short of a granted one.
    round_2 = label("loo", round_=2)
    blobs = contributions(public, enrolments, round_2, values)
    for subset in subsets:
        with pytest.raises(CohortError, match="differencing"):
            key_holder.decrypt_aggregate(_sum(public, blobs, subset), request(round_2, subset, LENGTH))
    assert decrypted_queries(key_holder.state) == [round_1.once_key]
    assert len(actions(key_holder.state, "refused")) == 2 * len(subsets)

    # A coordinator that claims DP noise for a release whose sites added none fails the tag check.
    claimed = label("loo", round_=3, dp_epsilon=1.0)
    undeclared = contributions(public, enrolments, label("loo", round_=3), values)
    with pytest.raises(AggregateCheckError, match="tags"):
        key_holder.decrypt_aggregate(_sum(public, undeclared, subsets[0]), request(claimed, subsets[0], LENGTH))
    assert decrypted_queries(key_holder.state) == [round_1.once_key]

    # Sites that did add DP noise declare it in their tags: that release may differ by one site.
    noised = label("loo", round_=4, dp_epsilon=1.0)
    blobs = contributions(public, enrolments, noised, values)
    granted = key_holder.decrypt_aggregate(_sum(public, blobs, subsets[0]), request(noised, subsets[0], LENGTH))
    np.testing.assert_allclose(granted, sum(values[s] for s in subsets[0]), atol=1e-6)


# --- Differencing around the pairwise rule. The coordinator chooses the run id and the task name the
# sites tag with, and the DP budget the sites apply; and any number of queries may be combined.

def _renamed_task(key_holder, enrolments, public, values):
    """The full sum under the task's name, then a leave-one-out sum under another name for it."""
    sites = sorted(values)
    first = label("named")
    blobs = contributions(public, enrolments, first, values)
    full = key_holder.decrypt_aggregate(_sum(public, blobs, sites), request(first, sites, LENGTH))
    renamed = QueryLabel(run_id="renamed", phase="train", round=1, task="referral_risk (again)")
    blobs = contributions(public, enrolments, renamed, values)
    rest = key_holder.decrypt_aggregate(_sum(public, blobs, sites[1:]), request(renamed, sites[1:], LENGTH))
    return sites[0], full - rest


def _token_dp(key_holder, enrolments, public, values):
    """The full sum, then a leave-one-out sum that 'carries DP noise' at epsilon 1e9: the sites
    train with a noise multiplier of about 6e-5 (models.training.dp_noise_multiplier), i.e. none."""
    sites = sorted(values)
    first = label("token-dp", round_=1)
    blobs = contributions(public, enrolments, first, values)
    full = key_holder.decrypt_aggregate(_sum(public, blobs, sites), request(first, sites, LENGTH))
    noised = label("token-dp", round_=2, dp_epsilon=1e9)
    blobs = contributions(public, enrolments, noised, values)
    rest = key_holder.decrypt_aggregate(_sum(public, blobs, sites[1:]), request(noised, sites[1:], LENGTH))
    return sites[0], full - rest


def _three_cohorts(key_holder, enrolments, public, values):
    """Five sites, min-sites 3: cohorts {0,2,3,4}, {1,2,3}, {0,1,4} differ pairwise by 3 or 4 sites,
    yet site_1 = ({1,2,3} + {0,1,4} - {0,2,3,4}) / 2 (the same computation in three runs, e.g. statistics)."""
    cohorts = [["site_0", "site_2", "site_3", "site_4"], ["site_1", "site_2", "site_3"], ["site_0", "site_1", "site_4"]]
    sums = []
    for i, cohort in enumerate(cohorts):
        query = label(f"combined-{i}")
        blobs = contributions(public, enrolments, query, {s: values[s] for s in cohort})
        sums.append(key_holder.decrypt_aggregate(_sum(public, blobs, cohort), request(query, cohort, LENGTH)))
    return "site_1", (sums[1] + sums[2] - sums[0]) / 2


@pytest.mark.parametrize("attack, n_sites", [(_renamed_task, 4), (_token_dp, 4), (_three_cohorts, 5)],
                         ids=["renamed task", "dp epsilon 1e9", "three cohorts"])
def test_differencing_around_the_pairwise_rule_is_refused(key_holder_of, attack, n_sites):
    key_holder, enrolments, public = key_holder_of(n_sites=n_sites, min_sites=3)
    values = site_values(enrolments, LENGTH, seed=n_sites)
    try:
        site, recovered = attack(key_holder, enrolments, public, values)
    except (CohortError, AggregateCheckError):
        return  # refused
    error = float(np.abs(recovered - values[site]).max())
    pytest.fail(f"every sum was decrypted and {site}'s update comes out to within {error:.1e}")
