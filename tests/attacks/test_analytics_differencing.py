"""Attack: isolate one clinic's small cell with a sequence of overlapping statistics queries.

Three (or four) clinics; clinic X alone has three patients with AVPU "V", and two patients aged
50.5. Every query is summed over all clinics and decrypted by the real key holder, so no single
site's answer is ever released, yet the coordinator can still aim its queries at X's small cells:

1. a category only X has: the federated count of "V" *is* X's cell;
2. the total row count minus the released cells of a grouped count is the sum of the suppressed
   cells, which is X's small cell when X suppressed only that one;
3. two histograms whose edges differ by one unit: their difference is the rows between the edges;
4. the same count over all clinics, then over all but X.

Each attack is first run against the site code with its protection switched off (as the code was
before it), to show that it recovers X's cell; then against the code as it is: suppression at the
site (1), complementary suppression (2), the site's one-partition-per-column rule unless noised (3)
and the key holder's cohort ledger (4).
"""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pytest

import keyholder.key_holder as key_holder_module
import node_agent.analytics as site_analytics
from federation.analytics import Count, Histogram, decode, layout
from federation.crypto import WIDE_SCALE_BITS
from federation.tags import QueryLabel
from keyholder.errors import CohortError
from node_agent.analytics import answer_query
from node_agent.errors import PolicyRefusal
from node_agent.policy import AnalyticsPolicy, SitePolicy
from node_agent.store import SiteStore
from tests.attacks.conftest import TASK, add, contributions, request

SMALL_V = 3


def _clinic(site_dir, spec, avpu: dict[str, int], ages: list[float]):
    values = [v for v, n in avpu.items() for _ in range(n)]
    frame = pd.DataFrame({"record_id": [f"{site_dir.name}-{i}" for i in range(len(values))], "avpu": values,
                          "age": ages[: len(values)], "sex": "F", "referred_up": "0"})
    with SiteStore(site_dir) as store:
        store.ensure_task_table(spec)
        store.connection.register("rows_frame", frame)
        cols = ", ".join(f'"{c}"' for c in frame.columns)
        store.connection.execute(f"INSERT INTO {store.table_name(spec)} ({cols}) SELECT {cols} FROM rows_frame")
    return site_dir


@pytest.fixture()
def clinics(tmp_path, referral_spec):
    """site_0 is clinic X: 3 "V" patients and 2 aged 50.5; the others have neither."""
    away_from_50 = [float(a) for a in np.tile(np.r_[np.arange(20, 50), np.arange(52, 90)], 2)]
    x_ages = [50.5, 50.5, *away_from_50]
    return {
        "site_0": _clinic(tmp_path / "site_0", referral_spec, {"A": 40, "V": SMALL_V, "P": 20}, x_ages),
        "site_1": _clinic(tmp_path / "site_1", referral_spec, {"A": 50, "P": 30}, away_from_50[1:]),
        "site_2": _clinic(tmp_path / "site_2", referral_spec, {"A": 45, "P": 25}, away_from_50[2:]),
        "site_3": _clinic(tmp_path / "site_3", referral_spec, {"A": 35, "P": 22}, away_from_50[3:]),
    }


def _released(key_holder, enrolments, public, spec, query, sites: dict, policy: SitePolicy, cohort=None):
    """What the coordinator learns: each site's answer, encrypted with its tags, summed, and decrypted
    by the key holder for ``cohort`` (default: all sites)."""
    cohort = list(cohort or sites)
    label = QueryLabel(run_id=uuid.uuid4().hex, phase="analytics", round=0, task=TASK)
    vectors = {s: answer_query(sites[s], spec, query, policy, run_id=label.run_id).vector for s in cohort}
    blobs = contributions(public, enrolments, label, vectors, scale_bits=WIDE_SCALE_BITS)
    summed = key_holder.decrypt_aggregate(add(public, [blobs[s] for s in cohort]),
                                          request(label, cohort, layout(query, spec).length, WIDE_SCALE_BITS))
    return decode(query, spec, summed, sites=cohort)


def _v_attacks(key_holder, enrolments, public, spec, sites, policy) -> tuple[float, float]:
    """(the federated "V" count, total rows minus the released avpu cells)."""
    grouped = _released(key_holder, enrolments, public, spec, Count(group_by="avpu"), sites, policy)
    total = _released(key_holder, enrolments, public, spec, Count(), sites, policy)
    frame = grouped.to_frame().set_index("avpu")
    return float(frame.loc["V", "count"]), float(total.to_frame()["count"].iloc[0] - frame["count"].sum())


def test_a_category_only_one_clinic_has_and_its_complement(key_holder_of, clinics, referral_spec, monkeypatch):
    key_holder, enrolments, public = key_holder_of(n_sites=4, min_sites=3)
    policy = SitePolicy(min_n=10)

    # Before: no suppression at the sites. The federated "V" count is X's cell.
    with monkeypatch.context() as patch:
        patch.setattr(site_analytics, "suppress", lambda counts, lines, k: np.zeros(len(counts), dtype=bool))
        v_count, _ = _v_attacks(key_holder, enrolments, public, referral_spec, clinics, policy)
    assert v_count == SMALL_V

    # Primary suppression alone: "V" is hidden, but total minus the released cells gives it back.
    with monkeypatch.context() as patch:
        patch.setattr(site_analytics, "suppress", lambda counts, lines, k: (counts > 0) & (counts < k))
        v_count, complement = _v_attacks(key_holder, enrolments, public, referral_spec, clinics, policy)
    assert v_count == 0 and complement == SMALL_V

    # Now: X hides a second cell with it, so the difference covers at least k rows, not X's cell.
    v_count, complement = _v_attacks(key_holder, enrolments, public, referral_spec, clinics, policy)
    assert v_count == 0
    assert complement >= 10 and complement != SMALL_V


def test_shifted_histogram_edges(key_holder_of, clinics, referral_spec, monkeypatch):
    key_holder, enrolments, public = key_holder_of(n_sites=4, min_sites=3)
    policy = SitePolicy(min_n=10)

    def difference() -> float:
        first = _released(key_holder, enrolments, public, referral_spec, Histogram(column="age", edges=(0, 50, 120)),
                          clinics, policy)
        second = _released(key_holder, enrolments, public, referral_spec, Histogram(column="age", edges=(0, 51, 120)),
                           clinics, policy)
        return float(second.to_frame()["count"].iloc[0] - first.to_frame()["count"].iloc[0])

    # Now: the sites release the first edges, then refuse other edges for the column they released exactly ...
    with pytest.raises(PolicyRefusal, match="differencing"):
        difference()
    # Before (no partition rule): every bin holds dozens of rows, so suppression passes both; their
    # difference is X's 2 patients.
    with monkeypatch.context() as patch:
        patch.setattr(site_analytics, "check_partition", lambda *args: None)
        assert difference() == 2
    # ... and answer them only with noise, charged to their budgets and declared (their tags bind it).
    noisy = SitePolicy(min_n=10, analytics=AnalyticsPolicy(dp_epsilon=0.5))
    answer = answer_query(clinics["site_0"], referral_spec, Histogram(column="age", edges=(0, 51, 120)), noisy,
                          run_id="noised")
    assert answer.dp_epsilon == 0.5 and answer.vector[1] != 40 + 2


def test_the_same_count_over_all_clinics_but_one(key_holder_of, clinics, referral_spec, monkeypatch):
    key_holder, enrolments, public = key_holder_of(n_sites=4, min_sites=3)
    policy = SitePolicy(min_n=10)
    query = Count(group_by="avpu")
    others = ["site_1", "site_2", "site_3"]

    # Now: after the count over all clinics, a cohort one clinic short of it is refused, whatever the query.
    _released(key_holder, enrolments, public, referral_spec, query, clinics, policy)
    with pytest.raises(CohortError, match="differencing"):
        _released(key_holder, enrolments, public, referral_spec, Count(), clinics, policy, cohort=others)

    # Before (no cohort ledger at the key holder, no suppression at the sites): the difference is X's
    # whole answer, its 3 "V" patients included.
    with monkeypatch.context() as patch:
        patch.setattr(key_holder_module, "exposed_sites", lambda *args: None)
        patch.setattr(site_analytics, "suppress", lambda counts, lines, k: np.zeros(len(counts), dtype=bool))
        everyone = _released(key_holder, enrolments, public, referral_spec, query, clinics, policy)
        without_x = _released(key_holder, enrolments, public, referral_spec, query, clinics, policy, cohort=others)
    assert (everyone.values - without_x.values)[:, 0].tolist() == [40, SMALL_V, 20, 0, 0]
