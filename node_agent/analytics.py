"""A site's answer to a federated-statistics query, suppressed (and optionally noised) before it leaves.

The query (``federation.analytics``) arrives as canonical JSON in the message's config
(``analytics-query``). The site decides what it answers (``SitePolicy.analytics``): the query's kind
must be on its list, and the task's plan approved (``admitted_query``). The vector is computed with
set-based SQL on the site's DuckDB (``site_table``), over all accepted rows of the task, and then:

- **Small cells stay in.** With ``k = max(MIN_CELL, the policy's min_n)``, a count cell (or the n
  behind a mean or a histogram bin) with ``0 < n < k`` is sent as zeros and flagged (primary
  suppression). Because every query partitions the site's rows and the site's row count is declared,
  ``total - released cells`` is the sum of the suppressed ones; so, per line of the table (the whole
  partition; a cross-tab's rows and columns, whose sums are margins another count releases), more
  cells are suppressed, smallest first, until each line hides at least two cells and at least k rows
  or hides all it has (complementary suppression, ``suppress``).
- **One partition per column.** Two exact histograms of one column with different edges would give,
  by difference, the rows between two edges. The site keeps the edges of its first exact histogram of
  a column (its audit log, ``analytics-released``) and refuses other edges without noise.
- **Optional DP at the site.** With ``analytics.dp_epsilon > 0`` in the site's policy (never from the
  message), counts get Laplace noise of scale 1/ε (a row moves one cell by one), a mean's n, sum and
  sum of squares each get ε/3 at their sensitivity (values clipped to the spec's min/max), drawn from
  the operating system's randomness; the cells are suppressed on the noisy counts; ε is charged to
  the site's budget ledger once per query, and declared in the reply (the tags bind it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from federation.analytics import (
    MISSING,
    Count,
    CrossTab,
    Histogram,
    Layout,
    Mean,
    QueryError,
    categories,
    layout,
    parse_query,
    query_digest,
)
from models.spec import TaskSpec
from node_agent.budget import charge_run, node_audit
from node_agent.errors import PolicyRefusal
from node_agent.policy import SitePolicy
from node_agent.store import SiteStore, quote_ident, sql_text

__all__ = ["MIN_CELL", "SiteRelease", "admitted_query", "answer_query", "cell_threshold", "check_partition",
           "noised", "site_table", "suppress"]

MIN_CELL = 10
QUERY_KEY = "analytics-query"


def cell_threshold(policy: SitePolicy) -> int:
    """The smallest cell a site releases: at least ``MIN_CELL``, more if its ``min_n`` says so."""
    return max(MIN_CELL, policy.min_n)


def admitted_query(policy: SitePolicy, spec: TaskSpec, config) -> Count | Mean | Histogram | CrossTab:
    """The query a message carries, if this site answers that kind of query about this task.

    Raises
    ------
    PolicyRefusal
        If the query is malformed, does not fit the task, or its kind is not on the site's list.
    """
    try:
        query = parse_query(str(config[QUERY_KEY]))
        layout(query, spec)
    except KeyError:
        raise PolicyRefusal("an analytics message without its query") from None
    except QueryError as exc:
        raise PolicyRefusal(f"a malformed query: {exc}") from exc
    if query.kind not in policy.analytics.allowed:
        raise PolicyRefusal(f"{query.kind} queries are not allowed by this site's policy "
                            f"(allowed: {', '.join(policy.analytics.allowed) or 'none'})")
    return query


def _category_sql(spec: TaskSpec, column: str) -> str:
    text = f"CAST({quote_ident(column)} AS VARCHAR)"
    listed = ", ".join(sql_text(v) for v in categories(spec, column)[:-1])
    return f"CASE WHEN {text} IN ({listed}) THEN {text} ELSE {sql_text(MISSING)} END"


def _bin_sql(column: str, edges: tuple[float, ...]) -> str:
    x = quote_ident(column)
    last = len(edges) - 2
    cases = " ".join(f"WHEN {x} >= {a!r} AND {x} {'<=' if i == last else '<'} {b!r} THEN {i}"
                     for i, (a, b) in enumerate(pairwise(edges)))
    return f"CASE {cases} ELSE -1 END"


def site_table(site_dir: Path, spec: TaskSpec, query, *, clip: bool = False) -> tuple[np.ndarray, int]:
    """The query's cells at this site (cells x width, ``Layout`` order) and the site's row count.

    One grouped SQL statement per query over all accepted rows of the task; ``clip`` bounds a mean's
    values to the spec's min/max (for the noise's sensitivity).
    """
    shape = layout(query, spec)
    table = np.zeros((len(shape.cells), shape.width))
    index = {cell: i for i, cell in enumerate(shape.cells)}
    with SiteStore(site_dir, read_only=True) as store:
        source = store.table_name(spec)
        connection = store.connection
        (rows,) = connection.execute(f"SELECT count(*) FROM {source}").fetchone()
        if isinstance(query, Count) and query.group_by is None:
            table[0, 0] = rows
        elif isinstance(query, Count):
            sql = f"SELECT {_category_sql(spec, query.group_by)} AS g, count(*) FROM {source} GROUP BY g"
            for group, n in connection.execute(sql).fetchall():
                table[index[(group,)], 0] = n
        elif isinstance(query, CrossTab):
            sql = (f"SELECT {_category_sql(spec, query.rows)} AS r, {_category_sql(spec, query.columns)} AS c, "
                   f"count(*) FROM {source} GROUP BY r, c")
            for r, c, n in connection.execute(sql).fetchall():
                table[index[(r, c)], 0] = n
        elif isinstance(query, Histogram):
            sql = f"SELECT {_bin_sql(query.column, query.edges)} AS b, count(*) FROM {source} GROUP BY b"
            for b, n in connection.execute(sql).fetchall():
                table[int(b) if b >= 0 else len(shape.cells) - 1, 0] = n
        elif isinstance(query, Mean):
            x = quote_ident(query.column)
            feature = spec.feature(query.column)
            if clip and feature.min is not None and feature.max is not None:
                x = f"least(greatest({x}, {float(feature.min)!r}), {float(feature.max)!r})"
            group = _category_sql(spec, query.group_by) if query.group_by else sql_text(shape.cells[0][0])
            sql = (f"SELECT {group} AS g, count({x}), coalesce(sum({x}), 0), coalesce(sum({x} * {x}), 0) "
                   f"FROM {source} GROUP BY g")
            for g, n, total, squares in connection.execute(sql).fetchall():
                table[index[(g,)]] = (n, total, squares)
            table[-1, 0] = rows - table[:-1, 0].sum()  # the rows without a value
    return table, int(rows)


def suppress(counts: np.ndarray, lines: list[list[int]], k: int) -> np.ndarray:
    """Which cells to send as zeros: those with ``0 < count < k``, then, per line, the smallest
    released non-zero cells until the line hides at least two cells and ``k`` rows, or all it has."""
    counts = np.asarray(counts, dtype=float)
    mask = (counts > 0) & (counts < k)
    changed = True
    while changed:
        changed = False
        for line in lines:
            idx = np.asarray(line)
            hidden = mask[idx]
            if not hidden.any():
                continue
            open_ = idx[~hidden & (counts[idx] > 0)]
            if open_.size == 0 or (hidden.sum() >= 2 and counts[idx][hidden].sum() >= k):
                continue
            mask[open_[np.argmin(counts[open_])]] = True
            changed = True
    return mask


def noised(table: np.ndarray, query, spec: TaskSpec, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """``table`` plus Laplace noise for ``epsilon`` in total (see the module docstring)."""
    noisy = np.array(table, dtype=float)
    if isinstance(query, Mean):
        feature = spec.feature(query.column)
        if feature.min is None or feature.max is None:
            raise PolicyRefusal(f"a noised mean needs the spec's min and max of {query.column!r}")
        bound = max(abs(feature.min), abs(feature.max))
        noisy[:, 0] += rng.laplace(0.0, 3.0 / epsilon, len(noisy))
        noisy[:-1, 1] += rng.laplace(0.0, 3.0 * bound / epsilon, len(noisy) - 1)
        noisy[:-1, 2] += rng.laplace(0.0, 3.0 * bound**2 / epsilon, len(noisy) - 1)
    else:
        noisy[:, 0] += rng.laplace(0.0, 1.0 / epsilon, len(noisy))
    return noisy


def check_partition(site_dir: Path, spec: TaskSpec, query) -> None:
    """Refuse an exact histogram whose edges differ from the first exact one of its column here."""
    if not isinstance(query, Histogram):
        return
    for entry in node_audit(site_dir).entries():
        details = entry["details"]
        if (entry["action"] == "analytics-released" and details.get("task") == spec.name
                and details.get("kind") == "histogram" and details.get("column") == query.column
                and not details.get("dp_epsilon") and tuple(details.get("edges", ())) != query.edges):
            raise PolicyRefusal(f"differencing: this site released {query.column!r} exactly with other bin edges "
                                f"({details.get('edges')}); other edges only with differential-privacy noise")


@dataclass
class SiteRelease:
    """What a site sends for one query: its vector (``Layout``), the rows it covers, the noise it applied."""

    vector: np.ndarray
    rows: int
    dp_epsilon: float
    suppressed: np.ndarray


def release_vector(table: np.ndarray, rows: int, shape: Layout, mask: np.ndarray) -> np.ndarray:
    sent = np.where(mask[:, None], 0.0, table)
    return np.concatenate([[float(rows)], sent.ravel(), mask.astype(float)])


def answer_query(site_dir: Path, spec: TaskSpec, query, policy: SitePolicy, *, run_id: str,
                 rng: np.random.Generator | None = None) -> SiteRelease:
    """The site's vector for ``query``: computed, noised if its policy says so (and charged), suppressed.

    Raises
    ------
    PolicyRefusal
        Other edges for a column released exactly before, or a noise charge past the site's budget.
    """
    epsilon = float(policy.analytics.dp_epsilon)
    if epsilon == 0.0:
        check_partition(site_dir, spec, query)
    elif isinstance(query, Mean) and None in (spec.feature(query.column).min, spec.feature(query.column).max):
        raise PolicyRefusal(f"a noised mean needs the spec's min and max of {query.column!r}")
    shape = layout(query, spec)
    k = cell_threshold(policy)
    if epsilon > 0.0:
        # Charged before anything is computed; a query is charged once (its run id is fresh).
        charge_run(site_dir, policy.dp.model_copy(update={"epsilon_per_run": epsilon}),
                   run_id=f"analytics|{run_id}", task=spec.name, mechanism="laplace")
        table, rows = site_table(site_dir, spec, query, clip=True)
        table = noised(table, query, spec, epsilon, rng or np.random.default_rng())
        mask = table[:, 0] < k  # on the noisy counts: post-processing keeps the guarantee
    else:
        table, rows = site_table(site_dir, spec, query)
        mask = suppress(table[:, 0], shape.lines, k)
    details = {"task": spec.name, "kind": query.kind, "query": json.loads(query.model_dump_json()),
               "digest": query_digest(query), "dp_epsilon": epsilon, "suppressed": int(mask.sum()), "k": k}
    if isinstance(query, Histogram):
        details |= {"column": query.column, "edges": list(query.edges)}
    node_audit(site_dir).append(actor="node", action="analytics-released", run_id=run_id, **details)
    return SiteRelease(release_vector(table, rows, shape, mask), rows, epsilon, mask)
