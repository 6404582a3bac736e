"""A site's answer to a statistics query: its SQL against pandas, suppression at k - 1 and k, the
noise's scale, the site's admission and its one-partition-per-column rule, and the ClientApp handler."""

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
    decode,
    layout,
)
from node_agent.admission import admit
from node_agent.analytics import (
    answer_query,
    cell_threshold,
    noised,
    site_table,
    suppress,
)
from node_agent.budget import spent
from node_agent.errors import PolicyRefusal
from node_agent.policy import (
    AnalyticsPolicy,
    SitePolicy,
    load_site_policy,
    save_site_policy,
)
from node_agent.store import SiteStore


def make_site(site_dir, spec, frame: pd.DataFrame):
    """A site store holding exactly ``frame``'s rows (other features left empty)."""
    frame = frame.reset_index(drop=True).copy()
    frame["record_id"] = [f"r{i}" for i in range(len(frame))]
    with SiteStore(site_dir) as store:
        store.ensure_task_table(spec)
        columns = ", ".join(f'"{c}"' for c in frame.columns)
        store.connection.register("rows_frame", frame)
        store.connection.execute(f"INSERT INTO {store.table_name(spec)} ({columns}) SELECT {columns} FROM rows_frame")
    return site_dir


def avpu_site(tmp_path, spec, v_count: int, name: str = "clinic"):
    """A site with 30 A, ``v_count`` V, 15 P and no U (ages 20 to 79, label alternating)."""
    values = ["A"] * 30 + ["V"] * v_count + ["P"] * 15
    frame = pd.DataFrame({"avpu": values, "sex": ["F", "M"] * (len(values) // 2) + ["F"] * (len(values) % 2),
                          "age": [20.0 + i % 60 for i in range(len(values))],
                          "referred_up": [str(i % 2) for i in range(len(values))]})
    return make_site(tmp_path / name, spec, frame)


def policy_with(site_dir, *, kinds=("count", "mean", "histogram", "crosstab"), min_n=10, dp_epsilon=0.0,
                spec=None, budget=10.0) -> SitePolicy:
    policy = load_site_policy(site_dir)
    policy.analytics = AnalyticsPolicy(allowed=list(kinds), dp_epsilon=dp_epsilon)
    policy.min_n = min_n
    policy.dp.budget_epsilon = budget
    if spec is not None:
        policy.approve(spec, by="test")
    save_site_policy(site_dir, policy)
    return policy


def test_site_cells_equal_pandas_on_the_sites_rows(small_federation, referral_spec):
    site = small_federation[0]
    with SiteStore(site, read_only=True) as store:
        rows = store.load(referral_spec)
    table, n = site_table(site, referral_spec, Count(group_by="sex"))
    assert n == len(rows)
    counts = rows["sex"].where(rows["sex"].isin(["F", "M"]), MISSING).value_counts()
    assert list(table[:, 0]) == [counts.get("F", 0), counts.get("M", 0), counts.get(MISSING, 0)]

    table, _ = site_table(site, referral_spec, Mean(column="sbp", group_by="referred_up"))
    for i, cls in enumerate(referral_spec.label.classes):
        values = rows.loc[rows["referred_up"] == cls, "sbp"].dropna()
        assert table[i] == pytest.approx([len(values), values.sum(), (values**2).sum()])
    assert table[-1, 0] == rows["sbp"].isna().sum()

    edges = (0.0, 30.0, 45.0, 60.0, 90.0)
    table, _ = site_table(site, referral_spec, Histogram(column="age", edges=edges))
    expected, _ = np.histogram(rows["age"].dropna(), bins=edges)
    assert list(table[:-1, 0]) == list(expected)
    assert table[-1, 0] == len(rows) - expected.sum()

    table, _ = site_table(site, referral_spec, CrossTab(rows="sex", columns="hx_diabetes"))
    shape = layout(CrossTab(rows="sex", columns="hx_diabetes"), referral_spec)
    cells = dict(zip(shape.cells, table[:, 0]))
    for (sex, diabetes), n_cell in rows.groupby(["sex", rows["hx_diabetes"].map({True: "true", False: "false"})]
                                                ).size().items():
        assert cells[(sex, diabetes)] == n_cell
    assert sum(cells.values()) == len(rows)


@pytest.mark.parametrize(("v_count", "suppressed"), [(9, {"V", "P"}), (10, set())])
def test_suppression_at_its_boundary_k_minus_1_and_k(tmp_path, referral_spec, v_count, suppressed):
    site = avpu_site(tmp_path, referral_spec, v_count)
    policy = policy_with(site)
    assert cell_threshold(policy) == 10
    query = Count(group_by="avpu")
    answer = answer_query(site, referral_spec, query, policy, run_id="r1")
    result = decode(query, referral_spec, answer.vector, sites=["clinic"])
    frame = result.to_frame().set_index("avpu")
    # V at k - 1 is suppressed, and P (the next smallest) with it: total - released must hide >= k rows.
    assert {g for g in frame.index if frame.loc[g, "suppressed_sites"]} == suppressed
    for group in suppressed:
        assert frame.loc[group, "count"] == 0
    assert frame.loc["A", "count"] == 30
    if not suppressed:
        assert frame.loc["V", "count"] == 10 and frame.loc["P", "count"] == 15
    assert result.rows == 45 + v_count
    # A site's min_n above 10 raises k.
    assert cell_threshold(SitePolicy(min_n=20)) == 20


def test_complementary_suppression_holds_every_line_of_a_cross_tab():
    counts = np.array([[30, 3, 40], [25, 50, 60]], dtype=float)
    lines = [list(range(6)), [0, 1, 2], [3, 4, 5], [0, 3], [1, 4], [2, 5]]
    mask = suppress(counts.ravel(), lines, 10)
    assert mask[1]  # the small cell
    for line in lines:
        hidden = mask[line]
        if hidden.any():
            assert hidden.sum() >= 2 and counts.ravel()[line][hidden].sum() >= 10
    # Without complementary cells, one margin would give the small cell back.
    assert not suppress(np.array([30.0, 40.0]), [[0, 1]], 10).any()


def test_laplace_noise_has_scale_one_over_epsilon(referral_spec):
    rng = np.random.default_rng(1)
    epsilon, draws = 0.5, 20_000
    table = np.zeros((draws, 1))
    noise = noised(table, Count(group_by="sex"), referral_spec, epsilon, rng)[:, 0]
    # Laplace(b): mean |x| = b, standard deviation sqrt(2) b; b = 1 / epsilon.
    assert np.mean(np.abs(noise)) == pytest.approx(1 / epsilon, rel=0.05)
    assert np.std(noise) == pytest.approx(np.sqrt(2) / epsilon, rel=0.05)
    assert abs(np.median(noise)) < 0.05 / epsilon
    # A mean spends epsilon / 3 on each of n, sum and sum of squares (values within the spec's bounds).
    mean_noise = noised(np.zeros((draws, 3)), Mean(column="age"), referral_spec, epsilon, rng)
    assert np.mean(np.abs(mean_noise[:, 0])) == pytest.approx(3 / epsilon, rel=0.05)
    assert np.mean(np.abs(mean_noise[:-1, 1])) == pytest.approx(3 * 120 / epsilon, rel=0.05)


def test_noised_answers_are_charged_and_refused_past_the_budget(tmp_path, referral_spec):
    site = avpu_site(tmp_path, referral_spec, 12)
    policy = policy_with(site, dp_epsilon=0.4, budget=1.0)
    query = Count(group_by="avpu")
    first = answer_query(site, referral_spec, query, policy, run_id="q1")
    assert first.dp_epsilon == 0.4
    assert not np.allclose(first.vector[1:5], [30, 12, 15, 0])  # noised
    answer_query(site, referral_spec, query, policy, run_id="q2")
    assert spent(site, period_days=365) == pytest.approx(0.8)
    import duckdb

    from node_agent.store import DB_NAME

    with duckdb.connect(str(site / DB_NAME), read_only=True) as con:  # the ledger names the mechanism
        assert {row[0] for row in con.execute("SELECT mechanism FROM privacy_budget").fetchall()} == {"laplace"}
    with pytest.raises(PolicyRefusal, match="budget"):
        answer_query(site, referral_spec, query, policy, run_id="q3")


def test_other_histogram_edges_of_a_column_are_refused_unless_noised(tmp_path, referral_spec):
    site = avpu_site(tmp_path, referral_spec, 12)
    policy = policy_with(site)
    answer_query(site, referral_spec, Histogram(column="age", edges=(0, 50, 120)), policy, run_id="h1")
    answer_query(site, referral_spec, Histogram(column="age", edges=(0, 50, 120)), policy, run_id="h2")
    with pytest.raises(PolicyRefusal, match="differencing"):
        answer_query(site, referral_spec, Histogram(column="age", edges=(0, 51, 120)), policy, run_id="h3")
    answer_query(site, referral_spec, Histogram(column="sbp", edges=(50, 120, 260)), policy, run_id="h4")
    noisy = policy_with(site, dp_epsilon=0.5)
    assert answer_query(site, referral_spec, Histogram(column="age", edges=(0, 51, 120)), noisy,
                        run_id="h5").dp_epsilon == 0.5


def _config(spec, query, run_id="a1", **extra):
    from flwr.app import ConfigRecord

    return ConfigRecord({"task-json": spec.model_dump_json(), "task-name": spec.name, "run-id": run_id,
                         "analytics-query": canonical(query), **extra})


def test_admission_needs_the_plan_and_the_query_kind(tmp_path, referral_spec):
    site = avpu_site(tmp_path, referral_spec, 12)
    with pytest.raises(PolicyRefusal, match="plan not approved"):
        admit(site, _config(referral_spec, Count()), "analytics")
    policy_with(site, kinds=("count",), spec=referral_spec)
    assert admit(site, _config(referral_spec, Count()), "analytics").spec.name == referral_spec.name
    with pytest.raises(PolicyRefusal, match="histogram queries are not allowed"):
        admit(site, _config(referral_spec, Histogram(column="age", edges=(0, 1))), "analytics")
    with pytest.raises(PolicyRefusal, match="malformed query"):
        admit(site, _config(referral_spec, Count(group_by="nope")), "analytics")
    # A policy file written before analytics existed still loads, allowing none.
    (site / "policy.json").write_text('{"version": 1, "min_n": 12}')
    assert load_site_policy(site).analytics.allowed == []


def test_the_client_app_answers_through_the_egress_guard(tmp_path, referral_spec):
    from node_agent.client_app import build_client_app
    from tests.attacks.conftest import call_node, node_message

    site = avpu_site(tmp_path, referral_spec, 9)
    policy = policy_with(site, kinds=("count",), spec=referral_spec)
    policy.allow_plaintext = True
    save_site_policy(site, policy)
    app = build_client_app([site], allow_plaintext=True)
    reply = call_node(app, node_message("query.analytics", _config(referral_spec, Count(group_by="avpu"),
                                                                   plaintext=True)))
    assert not reply.has_error() and "refusal" not in reply.content
    vector = reply.content["arrays"].to_numpy_ndarrays()[0]
    frame = decode(Count(group_by="avpu"), referral_spec, vector, sites=["clinic"]).to_frame().set_index("avpu")
    assert frame.loc["V", "count"] == 0 and frame.loc["V", "suppressed_sites"] == 1
    assert reply.content["metrics"]["num-examples"] == 54
    refused = call_node(app, node_message("query.analytics", _config(referral_spec, Mean(column="age"), run_id="a2",
                                                                     plaintext=True)))
    assert "mean queries are not allowed" in str(refused.content["refusal"]["reason"])
