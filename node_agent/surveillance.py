"""A site's answer to a syndromic-surveillance query: its daily syndrome counts, summed or published.

The query (``federation.surveillance.SyndromeCounts``) arrives as canonical JSON (``surveillance-query``).
The site answers only if its policy allows surveillance (``SitePolicy.surveillance``, off by default)
and names its district, the task's plan is approved, and the query counts the syndrome table this
site has (``models.syndromes.TABLE_VERSION``); otherwise it declines with a declared refusal.

Each accepted row of the task is put in the syndromes of the table it matches, from the columns
the task has (``complaint``, ``temperature``, ``complaint_text``), and on its day (``store.VISIT_DATE``).
Then, as the site's policy says:

- **district sum** (the default): the vector of ``federation.surveillance.day_layout``, whose cells
  below ``sum_min_cell`` (1 by default: none) are sent as zeros and flagged, with complementary
  suppression on the visits of the days, whose total is the site's row count. It leaves encrypted;
  the key holder decrypts only a sum over at least min-sites clinics of the district.
- **the clinic's own series** (``clinic_series`` "week" or "day"): counts per period and syndrome,
  those with ``0 < n < clinic_min_cell`` sent as 0 and flagged. They leave in the clear, so the
  egress guard checks them again (``check_clinic_series``): a reply with any count between 0 and the
  clinic's k, or a series its policy does not publish, never leaves.

Every answer is audited at the node (``surveillance-released``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Message

from federation.analytics import QueryError
from federation.surveillance import (
    SyndromeCounts,
    day_layout,
    parse_surveillance,
    periods,
    query_sha256,
)
from models.spec import TaskSpec
from models.syndromes import TABLE_VERSION, TEXT_FIELDS, match_syndromes
from node_agent.analytics import release_vector, suppress
from node_agent.budget import node_audit
from node_agent.errors import EgressViolation, PolicyRefusal
from node_agent.policy import SitePolicy
from node_agent.store import VISIT_DATE, SiteStore, quote_ident

__all__ = ["CLINIC_SERIES", "QUERY_KEY", "SiteSeries", "admitted_surveillance", "answer_surveillance",
           "check_clinic_series", "site_counts"]

QUERY_KEY = "surveillance-query"
MESSAGE_TYPE = "query.surveillance"
CLINIC_SERIES = "clinic-series"  # the reply's plaintext record of a published series
_READ = ("complaint", "temperature", *TEXT_FIELDS)


def admitted_surveillance(policy: SitePolicy, spec: TaskSpec, config) -> SyndromeCounts:
    """The query a message carries, if this site answers surveillance about this task.

    Raises
    ------
    PolicyRefusal
        Surveillance not allowed here or no district set, a malformed query, another syndrome
        table, or a task without a complaint to count.
    """
    rules = policy.surveillance
    if not rules.allowed:
        raise PolicyRefusal("syndromic surveillance is not allowed by this site's policy "
                            "(fenji node surveillance --allow)")
    if rules.district is None:
        raise PolicyRefusal("this site's policy names no district: it answers surveillance only into a district")
    try:
        query = parse_surveillance(str(config[QUERY_KEY]))
    except KeyError:
        raise PolicyRefusal("a surveillance message without its query") from None
    except QueryError as exc:
        raise PolicyRefusal(f"a malformed surveillance query: {exc}") from exc
    if query.table_version != TABLE_VERSION:
        raise PolicyRefusal(f"the query counts syndrome table {query.table_version}; this site has {TABLE_VERSION}")
    if not {"complaint", *TEXT_FIELDS} & set(spec.feature_names):
        raise PolicyRefusal(f"task {spec.name!r} has no chief complaint to count syndromes from")
    return query


def site_counts(site_dir: Path, spec: TaskSpec, query: SyndromeCounts) -> tuple[np.ndarray, int]:
    """The site's counts and its row count: ``table`` is (days + 1) x (syndromes + 1), a day's syndromes
    then its visits; the extra last row holds, in its last column, the visits outside the window or
    without a day."""
    days = {d.isoformat(): i for i, d in enumerate(query.days)}
    codes = {code: j for j, code in enumerate(query.syndromes)}
    table = np.zeros((len(days) + 1, len(codes) + 1))
    columns = [c for c in _READ if c in spec.feature_names]
    with SiteStore(site_dir, read_only=True) as store:
        day = f"CAST({VISIT_DATE} AS VARCHAR)" if store.has_visit_dates(spec) else "CAST(NULL AS VARCHAR)"
        select = ", ".join([*(quote_ident(c) for c in columns), f"{day} AS _day"])
        rows = store.connection.execute(f"SELECT {select} FROM {store.table_name(spec)}").fetchall()
    for row in rows:
        i = days.get(row[-1], len(days))
        table[i, -1] += 1
        if i == len(days):
            continue
        for match in match_syndromes(dict(zip(columns, row[:-1]))):
            j = codes.get(match.syndrome.code)
            if j is not None:
                table[i, j] += 1
    return table, len(rows)


@dataclass
class SiteSeries:
    """What a site sends: the vector for its district's sum, or its own series (``counts``, ``suppressed``)."""

    district: str
    rows: int
    vector: np.ndarray | None = None
    interval: str | None = None
    counts: np.ndarray | None = None
    suppressed: np.ndarray | None = None


def answer_surveillance(site_dir: Path, spec: TaskSpec, query: SyndromeCounts, policy: SitePolicy, *,
                        run_id: str) -> SiteSeries:
    """The site's answer (see the module docstring), audited as ``surveillance-released``."""
    rules = policy.surveillance
    table, rows = site_counts(site_dir, spec, query)
    n = len(query.syndromes)
    details = {"task": spec.name, "digest": query_sha256(query), "start": query.start.isoformat(),
               "end": query.end.isoformat(), "district": rules.district, "table_version": query.table_version}
    if rules.clinic_series != "none":
        spans = periods(query, rules.clinic_series)
        counts = np.array([table[idx, :n].sum(axis=0) for _, idx in spans]).reshape(len(spans), n)
        hidden = (counts > 0) & (counts < rules.clinic_min_cell)
        answer = SiteSeries(rules.district, rows, interval=rules.clinic_series, counts=np.where(hidden, 0.0, counts),
                            suppressed=hidden.astype(float))
        details |= {"release": "clinic-series", "interval": rules.clinic_series, "k": rules.clinic_min_cell,
                    "suppressed": int(hidden.sum())}
    else:
        shape = day_layout(query)
        cells = np.append(table[:-1].ravel(), table[-1, -1])[:, None]
        mask = suppress(cells[:, 0], shape.lines, rules.sum_min_cell)
        answer = SiteSeries(rules.district, rows, vector=release_vector(cells, rows, shape, mask))
        details |= {"release": "district-sum", "k": rules.sum_min_cell, "suppressed": int(mask.sum())}
    node_audit(site_dir).append(actor="node", action="surveillance-released", run_id=run_id, **details)
    return answer


def check_clinic_series(reply: Message, policy: SitePolicy) -> None:
    """The egress guard's rule for a published series: the policy publishes one at the interval the
    reply declares, every count is a whole number that is 0 or at least ``clinic_min_cell``, and the
    flags mark only zeros.

    Raises
    ------
    EgressViolation
        If any of that does not hold (the reply is then replaced by an error: nothing leaves).
    """
    if reply.has_error() or CLINIC_SERIES not in reply.content:
        return
    if reply.metadata.message_type != MESSAGE_TYPE:
        raise EgressViolation(f"a {CLINIC_SERIES} record in a {reply.metadata.message_type} reply")
    rules = policy.surveillance
    interval = reply.content["site"].get("series-interval") if "site" in reply.content else None
    if not rules.allowed or rules.clinic_series == "none" or interval != rules.clinic_series:
        raise EgressViolation(f"this site's policy publishes no {interval} series of its own")
    record = reply.content[CLINIC_SERIES]
    if set(record.keys()) != {"counts", "suppressed"}:
        raise EgressViolation(f"{CLINIC_SERIES} holds {sorted(record.keys())}, not counts and suppressed")
    counts, flags = record["counts"].numpy(), record["suppressed"].numpy()
    k = rules.clinic_min_cell
    if counts.shape != flags.shape or not np.isfinite(counts).all() or (counts != np.round(counts)).any():
        raise EgressViolation(f"{CLINIC_SERIES}: counts must be whole numbers, one flag each")
    if ((counts > 0) & (counts < k)).any() or (counts < 0).any():
        raise EgressViolation(f"{CLINIC_SERIES}: a count below this site's k ({k}) for its own series: withheld")
    if not np.isin(flags, (0.0, 1.0)).all() or (counts[flags == 1] != 0).any():
        raise EgressViolation(f"{CLINIC_SERIES}: a suppression flag that is not 0/1 or flags a count")
