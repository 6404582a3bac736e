"""Federated statistics on Flower's real simulation engine, with the key holder as its own service:
each query type against the same statistic on the pooled rows (pooled here, in the test only)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from federation.analytics import (
    MISSING,
    Count,
    CrossTab,
    Histogram,
    Mean,
    canonical,
    layout,
)
from federation.audit import AuditLog
from keyholder.state import KeyHolderState
from node_agent.analytics import suppress
from node_agent.budget import node_audit
from node_agent.store import SiteStore
from simulation.analytics import run_simulated_queries
from tests.attacks.conftest import fresh_sites

EDGES = (0.0, 20.0, 40.0, 60.0, 80.0, 120.0)
QUERIES = [Count(), Count(group_by="avpu"), Mean(column="age", group_by="sex"), Histogram(column="age", edges=EDGES),
           CrossTab(rows="sex", columns="arrival")]
K = 10


@pytest.fixture(scope="module")
def answered(small_federation, referral_spec, tmp_path_factory):
    sites = fresh_sites(small_federation, tmp_path_factory.mktemp("analytics-sites"))
    home, audit = tmp_path_factory.mktemp("analytics-keyholder"), tmp_path_factory.mktemp("coordinator") / "audit.jsonl"
    results = run_simulated_queries(QUERIES, sites, task=referral_spec, keyholder_home=home, audit_log=audit)
    frames = []
    for site in sites:
        with SiteStore(site, read_only=True) as store:
            frames.append(store.load(referral_spec).assign(site=site.name))
    parties = {"sites": sites, "keyholder": home, "audit": audit}
    return dict(zip([q.model_dump_json() for q in QUERIES], results)), pd.concat(frames, ignore_index=True), parties


def _result(answered, query):
    return answered[0][query.model_dump_json()]


def _released_sum(per_site: list[np.ndarray], lines: list[list[int]]) -> np.ndarray:
    """The sum of the sites' cells (counted here with pandas), each site's small cells suppressed."""
    return np.sum([np.where(suppress(cells, lines, K), 0, cells) for cells in per_site], axis=0)


def _grouped(rows: pd.DataFrame, column: str, values: list[str]) -> pd.Series:
    text = rows[column].astype("string")
    return text.where(text.isin(values), MISSING)


def test_count_and_grouped_count_equal_the_pooled_rows(answered, small_federation):
    pooled = answered[1]
    total = _result(answered, QUERIES[0])
    assert total.to_frame()["count"].tolist() == [len(pooled)]
    assert total.rows == len(pooled) and total.sites == sorted(p.name for p in small_federation)

    frame = _result(answered, QUERIES[1]).to_frame().set_index("avpu")
    groups = _grouped(pooled, "avpu", ["A", "V", "P", "U"])
    per_site = pd.crosstab(groups, pooled["site"])
    for group, row in frame.iterrows():
        if row["suppressed_sites"] == 0:
            assert row["count"] == (groups == group).sum()
        else:
            assert row["count"] < (groups == group).sum()
    per_site_counts = [per_site[site].reindex(frame.index, fill_value=0).to_numpy(dtype=float)
                       for site in sorted(per_site.columns)]
    assert frame["count"].tolist() == _released_sum(per_site_counts, [list(range(len(frame)))]).tolist()
    # Every site's small cell of avpu (0 < n < k) was suppressed there.
    small = ((per_site > 0) & (per_site < K)).sum(axis=1)
    for group, n_small in small.items():
        assert frame.loc[group, "suppressed_sites"] >= n_small


def test_mean_and_variance_equal_the_pooled_rows(answered):
    pooled = answered[1]
    frame = _result(answered, QUERIES[2]).to_frame().set_index("sex")
    for sex in ("F", "M"):
        values = pooled.loc[pooled["sex"] == sex, "age"].dropna()
        assert frame.loc[sex, "suppressed_sites"] == 0
        assert frame.loc[sex, "n"] == pytest.approx(len(values), abs=1e-6)
        assert frame.loc[sex, "mean"] == pytest.approx(values.mean(), abs=1e-4)
        assert frame.loc[sex, "variance"] == pytest.approx(values.var(ddof=1), rel=1e-4)


def test_histogram_and_its_quantiles_equal_the_pooled_rows(answered, referral_spec):
    rows = answered[1]
    pooled = rows["age"].dropna()
    result = _result(answered, QUERIES[3])
    frame = result.to_frame()
    per_site = []
    for _, site_rows in rows.groupby("site"):
        counts, _ = np.histogram(site_rows["age"].dropna(), bins=EDGES)
        per_site.append(np.append(counts, len(site_rows) - counts.sum()).astype(float))
    expected = _released_sum(per_site, layout(QUERIES[3], referral_spec).lines)
    assert frame["count"].tolist() == expected.tolist()
    released = frame["suppressed_sites"].to_numpy()[:-1] == 0
    assert released.any() and not released.all()  # the synthetic clinics have few patients under 20 or over 80
    pooled_counts, _ = np.histogram(pooled, bins=EDGES)
    assert frame["count"].to_numpy()[:-1][released].tolist() == pooled_counts[released].tolist()
    # The median, read from the bins, within one bin of the pooled rows' own.
    assert abs(result.quantile(0.5) - np.median(pooled)) <= max(np.diff(EDGES))


def test_cross_tab_equals_the_pooled_rows_where_released(answered, referral_spec):
    pooled = answered[1]
    frame = _result(answered, QUERIES[4]).to_frame()
    sex = _grouped(pooled, "sex", ["F", "M"])
    arrival = _grouped(pooled, "arrival", ["walk_in", "ambulance", "referral"])
    shape = layout(QUERIES[4], referral_spec)
    per_site = [np.array([((sex == r) & (arrival == c) & (pooled["site"] == site)).sum() for r, c in shape.cells],
                         dtype=float) for site in sorted(pooled["site"].unique())]
    assert frame["count"].tolist() == _released_sum(per_site, shape.lines).tolist()
    table = pd.crosstab(sex, arrival)
    assert (frame["suppressed_sites"] == 0).any()
    for _, row in frame[frame["suppressed_sites"] == 0].iterrows():
        expected = table.loc[row["sex"], row["arrival"]] if (row["sex"] in table.index
                                                             and row["arrival"] in table.columns) else 0
        assert row["count"] == expected


def test_each_query_is_decrypted_once_and_audited_on_both_sides(answered, referral_spec):
    parties = answered[2]
    ledger = [e for e in KeyHolderState(parties["keyholder"]).ledger.entries() if e["action"] == "decrypt"]
    assert len(ledger) == len(QUERIES) and len({e["details"]["query"] for e in ledger}) == len(QUERIES)
    assert {e["details"]["kind"] for e in ledger} == {f"{referral_spec.name}:analytics"}
    logged = [e for e in AuditLog(parties["audit"]).entries() if e["action"] == "analytics-query"]
    assert [e["details"]["query"] for e in logged] == [canonical(q) for q in QUERIES]
    for site in parties["sites"]:
        released = [e for e in node_audit(site).entries() if e["action"] == "analytics-released"]
        assert len(released) == len(QUERIES)
        hashes = {e["hash"] for e in node_audit(site).entries()}
        assert all(r.audit_heads[site.name] in hashes for r in answered[0].values())
