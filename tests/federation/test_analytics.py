"""Typed statistics queries: canonical JSON, typed validation errors, the vector layout and decoding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from federation import analytics
from federation.analytics import (
    ALL,
    MISSING,
    NO_VALUE,
    OUTSIDE,
    Count,
    CrossTab,
    Histogram,
    Mean,
    QueryError,
    canonical,
    decode,
    layout,
    parse_query,
    query_digest,
)
from models.errors import ExitCode, FenjiError

QUERIES = [Count(), Count(group_by="sex"), Mean(column="age", group_by="referred_up"),
           Histogram(column="age", edges=(0, 40, 60, 120)), CrossTab(rows="sex", columns="hx_diabetes")]


def test_public_api_is_listed():
    assert all(hasattr(analytics, name) for name in analytics.__all__)


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.kind)
def test_canonical_json_round_trips_and_names_the_query(query):
    text = canonical(query)
    assert parse_query(text) == query
    assert " " not in text and text == canonical(parse_query(text))
    assert query_digest(query) == query_digest(parse_query(text))


def test_distinct_queries_have_distinct_digests():
    digests = {query_digest(q) for q in QUERIES}
    assert len(digests) == len(QUERIES)
    assert query_digest(Histogram(column="age", edges=(0, 50, 120))) != query_digest(
        Histogram(column="age", edges=(0, 51, 120)))


@pytest.mark.parametrize(("query", "message"), [
    (Count(group_by="age"), "numeric"),
    (Count(group_by="nope"), "no column"),
    (Mean(column="sex"), "not numeric"),
    (Histogram(column="avpu", edges=(0, 1)), "not numeric"),
    (CrossTab(rows="sex", columns="complaint_text_nope"), "no column"),
])
def test_queries_that_do_not_fit_the_task_are_typed_errors(referral_spec, query, message):
    with pytest.raises(QueryError, match=message) as caught:
        layout(query, referral_spec)
    assert isinstance(caught.value, FenjiError) and caught.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("bad", ['{"kind": "sql", "text": "SELECT *"}',
                                 '{"kind": "histogram", "column": "age", "edges": [3, 1]}',
                                 '{"kind": "count", "where": "site = 1"}',
                                 '{"kind": "crosstab", "rows": "sex", "columns": "sex"}'])
def test_malformed_queries_are_typed_errors(bad):
    with pytest.raises(QueryError):
        parse_query(bad)


def test_layout_partitions_every_row(referral_spec):
    count = layout(Count(group_by="sex"), referral_spec)
    assert count.cells == [("F",), ("M",), (MISSING,)] and count.length == 1 + 3 + 3
    assert layout(Count(), referral_spec).cells == [(ALL,)]
    mean = layout(Mean(column="age"), referral_spec)
    assert mean.cells == [(ALL,), (NO_VALUE,)] and mean.width == 3 and mean.length == 1 + 6 + 2
    histogram = layout(Histogram(column="age", edges=(0, 40, 60, 120)), referral_spec)
    assert histogram.cells[-1] == (OUTSIDE, "") and len(histogram.cells) == 4
    cross = layout(CrossTab(rows="sex", columns="hx_diabetes"), referral_spec)
    assert cross.shape == (3, 3) and len(cross.lines) == 1 + 3 + 3
    assert layout(Count(group_by="referred_up"), referral_spec).cells[:2] == [("0",), ("1",)]


def test_decode_gives_frames_means_variances_and_quantiles(referral_spec):
    rng = np.random.default_rng(0)
    values = {"F": rng.normal(50, 10, 40), "M": rng.normal(60, 5, 30)}
    # Two sites' vectors summed: rows, then (n, sum, sum_sq) per cell, then the suppression flags.
    cells = [[len(v), v.sum(), (v**2).sum()] for v in values.values()] + [[0, 0, 0], [3, 0, 0]]
    summed = np.concatenate([[73.0], np.ravel(cells), [0, 0, 1, 0]])
    frame = decode(Mean(column="age", group_by="sex"), referral_spec, summed, sites=["a", "b"]).to_frame()
    assert list(frame.columns) == ["sex", "n", "mean", "variance", "suppressed_sites"]
    f = frame.set_index("sex")
    assert f.loc["F", "mean"] == pytest.approx(values["F"].mean())
    assert f.loc["M", "variance"] == pytest.approx(values["M"].var(ddof=1))
    assert f.loc[MISSING, "suppressed_sites"] == 1 and np.isnan(f.loc[MISSING, "mean"])

    ages = rng.uniform(0, 100, 500)
    edges = (0.0, 25.0, 50.0, 75.0, 100.0)
    counts, _ = np.histogram(ages, bins=edges)
    summed = np.concatenate([[500.0], counts + 1e-3, [0.0], np.zeros(5)])  # CKKS noise, rounded away
    result = decode(Histogram(column="age", edges=edges), referral_spec, summed, sites=["a", "b", "c"])
    assert result.to_frame()["count"].tolist()[:-1] == counts.tolist()
    assert result.quantile(0.5) == pytest.approx(np.median(ages), abs=5.0)
    assert result.quantile(0.0) == 0.0 and result.quantile(1.0) == 100.0
    with pytest.raises(QueryError):
        decode(Count(), referral_spec, summed, sites=[])
    with pytest.raises(QueryError):
        decode(Count(), referral_spec, np.array([5.0, 5.0, 0.0]), sites=["a"]).quantile(0.5)
    assert isinstance(result.to_frame(), pd.DataFrame)
