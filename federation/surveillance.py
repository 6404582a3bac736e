"""Syndromic surveillance as a typed query: daily syndrome counts, summed per district or published by a clinic.

``SyndromeCounts`` asks every site, about one task's rows, how many visits of each syndrome of the
table in ``models.syndromes`` (``table_version``) it had on each day of ``[start, end]``. A site
answers in one of two ways, as its own policy says (``node_agent.surveillance``):

- **into its district's sum** (the default): the vector of ``day_layout``, encrypted, whose
  decryption the key holder grants only for a sum over at least min-sites clinics of one district
  (the sites bind their district into the sum's label: ``sum_phase``)::

      [rows, (day_0, syndrome_0), ..., (day_0, VISITS), (day_1, ...), ..., OUTSIDE, suppressed_0, ...]

  ``rows`` is the site's exact row count, ``VISITS`` all its visits of that day, ``OUTSIDE`` those
  outside the window or without a date (so visits and ``OUTSIDE`` partition the rows), then one flag
  per cell, 1 where the site sent the cell as zeros (its ``sum_min_cell``; none by default);
- **as its own series** (``ClinicRelease``): counts per day or per ISO week (only the weeks wholly
  inside the window), per syndrome, each either 0 or at least the clinic's own k, through its egress
  guard. A clinic that publishes its own series is not in its district's sum: every visit leaves in
  exactly one release, so no district sum minus the published series gives back a clinic that
  publishes nothing.

``SurveillanceResult`` holds what the coordinator learnt; ``series`` gives daily and weekly blocks
(a district's weekly counts are sums of its daily ones) and ``to_frame`` one long DataFrame.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from federation.analytics import Layout, QueryError, canonical, parse_query
from models.syndromes import TABLE_VERSION, syndrome_codes

__all__ = ["DISTRICT_PATTERN", "MAX_DAYS", "OUTSIDE", "VISITS", "ClinicRelease", "SeriesBlock", "SurveillanceResult",
           "SyndromeCounts", "day_layout", "decode_sum", "parse_any_query", "parse_surveillance", "periods",
           "query_sha256", "query_text", "sum_phase"]

VISITS = "(visits)"  # all visits of a day, whatever their syndrome
OUTSIDE = "(outside)"  # a site's visits outside the window, or without a date
MAX_DAYS = 371  # 53 weeks: the vector stays within the protocol's sizes
DISTRICT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"
Interval = Literal["day", "week"]


class SyndromeCounts(BaseModel):
    """Daily counts of ``syndromes`` (codes of the syndrome table ``table_version``) on ``start``..``end``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["syndromes"] = "syndromes"
    start: date
    end: date = Field(description="the last day counted (inclusive)")
    syndromes: tuple[str, ...] = Field(default_factory=lambda: tuple(syndrome_codes()), min_length=1)
    table_version: str = TABLE_VERSION

    @model_validator(mode="after")
    def _window(self) -> SyndromeCounts:
        days = (self.end - self.start).days + 1
        if not 1 <= days <= MAX_DAYS:
            raise ValueError(f"the window holds {days} day(s): between 1 and {MAX_DAYS}")
        if len(set(self.syndromes)) != len(self.syndromes):
            raise ValueError("a syndrome is named twice")
        unknown = sorted(set(self.syndromes) - set(syndrome_codes()))
        if self.table_version == TABLE_VERSION and unknown:
            raise ValueError(f"not in the syndrome table {TABLE_VERSION}: {', '.join(unknown)} "
                             f"(codes: {', '.join(syndrome_codes())})")
        return self

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days + 1)]


def parse_surveillance(text: str | dict) -> SyndromeCounts:
    """A surveillance query from its JSON (or a dict), or a ``QueryError`` saying what is wrong."""
    try:
        return SyndromeCounts.model_validate_json(text) if isinstance(text, str) else SyndromeCounts.model_validate(text)
    except ValidationError as exc:
        raise QueryError(f"not a valid surveillance query: {exc.errors()[0].get('msg', exc)}") from exc


def parse_any_query(text: str):
    """A stored query of either family: a surveillance query (kind ``syndromes``) or a statistics one."""
    data = json.loads(text) if isinstance(text, str) else text
    if isinstance(data, dict) and data.get("kind") == "syndromes":
        return parse_surveillance(data)
    return parse_query(text)


def sum_phase(district: str) -> str:
    """The label phase of one district's sum: the sites bind their district, the key holder decrypts it once."""
    return f"surveillance:{district}"


def day_layout(query: SyndromeCounts) -> Layout:
    """The cells of a site's vector for a district sum (see the module docstring)."""
    codes = [*query.syndromes, VISITS]
    cells = [(d.isoformat(), code) for d in query.days for code in codes] + [(OUTSIDE, "")]
    visits = [i for i, cell in enumerate(cells) if cell[1] == VISITS]
    return Layout(cells, 1, [[*visits, len(cells) - 1]], (len(query.days), len(codes)))


def periods(query: SyndromeCounts, interval: Interval) -> list[tuple[str, list[int]]]:
    """``(label, day indices)`` of each period: every day, or every ISO week wholly inside the window
    (labelled ``2025-W36``)."""
    days = query.days
    if interval == "day":
        return [(d.isoformat(), [i]) for i, d in enumerate(days)]
    weeks = []
    for i, d in enumerate(days):
        if d.isoweekday() == 1 and i + 7 <= len(days):
            year, week, _ = d.isocalendar()
            weeks.append((f"{year}-W{week:02d}", list(range(i, i + 7))))
    return weeks


@dataclass
class ClinicRelease:
    """A clinic's own series: counts per period and syndrome (0 where suppressed), and the flags."""

    site: str
    district: str
    interval: Interval
    counts: np.ndarray  # periods x syndromes
    suppressed: np.ndarray  # periods x syndromes, 0/1


@dataclass
class SeriesBlock:
    """One series of counts per period and syndrome: a district's (summed) or one clinic's (published).

    ``suppressed`` counts the site-periods left out of each count because a site suppressed them
    (0: the count is exact); ``visits`` (districts only) are all visits per period, the denominator.
    """

    level: Literal["district", "clinic"]
    unit: str
    district: str
    interval: Interval
    periods: list[str]
    syndromes: list[str]
    counts: np.ndarray
    suppressed: np.ndarray
    sites: list[str]
    visits: np.ndarray | None = None


def _by_period(daily: np.ndarray, spans: list[tuple[str, list[int]]]) -> np.ndarray:
    return np.array([daily[idx].sum(axis=0) for _, idx in spans]).reshape(len(spans), *daily.shape[1:])


@dataclass
class SurveillanceResult:
    """What the coordinator learnt from one surveillance query.

    ``sums`` maps a district to its decrypted daily sum (days x (syndromes + visits)), its
    suppression flags and the clinics in it; ``clinics`` holds the published series; ``unavailable``
    says why a district has no sum (too few clinics, the key holder's refusal); ``refused`` the
    sites that declined, with their reasons.
    """

    query: SyndromeCounts
    sums: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = field(default_factory=dict)
    clinics: dict[str, ClinicRelease] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    excluded: list = field(default_factory=list)
    audit_heads: dict[str, str] = field(default_factory=dict)

    @property
    def sites(self) -> list[str]:
        return sorted({s for _, _, sites in self.sums.values() for s in sites} | set(self.clinics))

    def series(self, interval: Interval = "day") -> list[SeriesBlock]:
        """Each district's series (its sum plus its clinics' published series at this interval), then
        each published clinic series, at ``interval``."""
        q, spans = self.query, periods(self.query, interval)
        labels, n = [label for label, _ in spans], len(q.syndromes)
        own = {}  # site -> (counts, flags) at this interval, where the clinic published one that fits
        for site, release in self.clinics.items():
            if release.interval == interval:
                own[site] = (release.counts, release.suppressed)
            elif release.interval == "day":  # a daily series adds up to weeks
                own[site] = (_by_period(release.counts, spans), _by_period(release.suppressed, spans))
        blocks = []
        for district in sorted({*self.sums, *(r.district for r in self.clinics.values())}):
            counts, flags, visits = np.zeros((len(spans), n)), np.zeros((len(spans), n)), None
            sites: list[str] = []
            if district in self.sums:
                summed, suppressed, sites = self.sums[district]
                counts += _by_period(summed[:, :n], spans)
                flags += _by_period(suppressed[:, :n], spans)
                visits = _by_period(summed[:, n], spans)
            published = sorted(s for s, r in self.clinics.items() if r.district == district and s in own)
            for site in published:
                counts, flags = counts + own[site][0], flags + own[site][1]
            if sites or published:
                blocks.append(SeriesBlock("district", district, district, interval, labels, list(q.syndromes), counts,
                                          flags, sorted([*sites, *published]), visits if not published else None))
        for site in sorted(own):
            release = self.clinics[site]
            blocks.append(SeriesBlock("clinic", site, release.district, interval, labels, list(q.syndromes),
                                      own[site][0], own[site][1], [site]))
        return blocks

    def to_frame(self, interval: Interval = "day") -> pd.DataFrame:
        """One row per series, period and syndrome: level, unit, district, period, syndrome, count,
        suppressed (site-periods left out of the count) and visits (districts; NaN otherwise)."""
        rows = []
        for block in self.series(interval):
            for i, period in enumerate(block.periods):
                visits = float(block.visits[i]) if block.visits is not None else float("nan")
                for j, code in enumerate(block.syndromes):
                    rows.append((block.level, block.unit, block.district, period, code, round(float(block.counts[i, j])),
                                 round(float(block.suppressed[i, j])), visits))
        return pd.DataFrame(rows, columns=["level", "unit", "district", "period", "syndrome", "count", "suppressed",
                                           "visits"])


def decode_sum(query: SyndromeCounts, summed: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """A decrypted district sum as (days x (syndromes + visits) counts, the same shape of flags, rows)."""
    shape = day_layout(query)
    summed = np.asarray(summed, dtype=float)
    if summed.size != shape.length:
        raise QueryError(f"a sum of {summed.size} values, the surveillance layout holds {shape.length}")
    cells = len(shape.cells)
    # Exact counts decrypt within CKKS noise (about 1e-3 at the wide scale): they are whole numbers.
    counts = np.round(summed[1 : 1 + cells])[:-1].reshape(shape.shape)
    flags = np.round(summed[1 + cells :])[:-1].reshape(shape.shape)
    return counts, flags, round(float(summed[0]))


def query_text(query: SyndromeCounts) -> str:
    """The canonical JSON the sites are sent, and its digest (what both sides audit)."""
    return canonical(query)


def query_sha256(query: SyndromeCounts) -> str:
    return hashlib.sha256(query_text(query).encode()).hexdigest()
