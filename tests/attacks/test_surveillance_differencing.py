"""Surveillance sums are under the key holder's rules like every other sum.

A coordinator that wants one clinic's daily syndrome counts could ask a district's sum over all its
clinics, then, in another run, the same district without that clinic (it sends the query to the
others only), and subtract. Or claim another district's label for a sum of this one's clinics. Each
district's sum is decrypted once per run and its cohort goes on the same ledger as training and
statistics sums: the second sum is refused, and a sum whose tags were made for another district's
label does not check.
"""

from __future__ import annotations

import pytest

from federation.errors import AggregateCheckError, PrivacyError
from federation.surveillance import SyndromeCounts, day_layout, sum_phase
from federation.tags import QueryLabel
from keyholder.errors import CohortError
from simulation.outbreak import SERIES_START
from tests.attacks.conftest import actions, add, contributions, request, site_values

QUERY = SyndromeCounts(start=SERIES_START, end=SERIES_START)
LENGTH = day_layout(QUERY).length


def _label(run: str, district: str = "north") -> QueryLabel:
    return QueryLabel(run_id=run, phase=sum_phase(district), round=0, task="triage")


def test_a_district_sum_without_one_clinic_after_one_with_it_is_refused(key_holder_of):
    key_holder, enrolments, public = key_holder_of(n_sites=4, min_sites=3)
    sites = sorted(enrolments)
    values = site_values(sites, LENGTH)
    first = contributions(public, enrolments, _label("day-1"), values)
    decrypted = key_holder.decrypt_aggregate(add(public, list(first.values())),
                                             request(_label("day-1"), sites, LENGTH))
    assert decrypted[0] == pytest.approx(sum(v[0] for v in values.values()), abs=1e-3)
    second = contributions(public, enrolments, _label("day-2"), {s: values[s] for s in sites[:3]})
    with pytest.raises(CohortError, match="differencing"):
        key_holder.decrypt_aggregate(add(public, list(second.values())), request(_label("day-2"), sites[:3], LENGTH))
    (refused,) = actions(key_holder.state, "refused")
    assert refused["details"]["kind"] == "triage:surveillance:north"


def test_a_sum_claimed_for_another_district_does_not_check(key_holder_of):
    key_holder, enrolments, public = key_holder_of(n_sites=3, min_sites=3)
    sites = sorted(enrolments)
    made = contributions(public, enrolments, _label("day-1", "north"), site_values(sites, LENGTH))
    with pytest.raises((AggregateCheckError, PrivacyError)):
        key_holder.decrypt_aggregate(add(public, list(made.values())), request(_label("day-1", "south"), sites, LENGTH))
