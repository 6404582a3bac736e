"""Decision-quality review at the clinic (诊疗合理性评价): the doctors' decisions against their outcomes.

- **over-referral**: referred up, and the outcome shows no higher tier was needed (``referred_up = 0``);
- **under-referral**: kept at the clinic, and the outcome shows a higher tier was needed (``referred_up = 1``);
- **agreement** with the recommended tier: the tier the doctor chose (the clinic for ``treat_here``)
  equals the tier Fenji recommended; otherwise the doctor chose a higher or a lower tier.

``review`` is the site admin's full view, with the cases behind each count; it stays at the clinic.
``released_review`` is the only form meant to leave it (to the commission): counts only, each below
the site's minimum n suppressed (and one more part of a total, so that a hidden part is not the total
minus the others) and the rest rounded, as the node's egress rules do (``node_agent.egress``); rates
are computed from the released counts only.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
from pydantic import BaseModel, Field

from node_agent.egress import COUNT_ROUNDING
from node_agent.outcome_rows import has_decision_tables
from node_agent.policy import load_site_policy
from node_agent.store import DB_NAME, SiteStore

__all__ = ["QualityCase", "QualityReview", "released_review", "review"]

TIER_RANK = {"community": 0, "county": 1, "tertiary": 2}
COUNTS = ("decisions", "with_outcome", "referred_with_outcome", "kept_with_outcome", "over_referral",
          "under_referral", "agreed", "doctor_higher", "doctor_lower")
# total -> the parts that sum to it: a single suppressed part would be the total minus the others.
PARTITIONS = {"decisions": ("agreed", "doctor_higher", "doctor_lower"),
              "with_outcome": ("referred_with_outcome", "kept_with_outcome")}
RATES = {"over_referral_rate": ("over_referral", "referred_with_outcome"),
         "under_referral_rate": ("under_referral", "kept_with_outcome"),
         "agreement_rate": ("agreed", "decisions")}


class QualityCase(BaseModel):
    decision_id: str
    encounter_id: str
    decided_at: datetime
    kind: str = Field(description="over_referral or under_referral")
    recommended_tier: str
    decision: str
    referred_tier: str | None


class QualityReview(BaseModel):
    """The clinic's decisions against their outcomes (exact counts: for the site admin only)."""

    decisions: int = Field(description="decisions recorded")
    with_outcome: int = Field(description="decisions whose outcome says whether a higher tier was needed")
    referred_with_outcome: int
    kept_with_outcome: int
    over_referral: int = Field(description="referred, but no higher tier was needed")
    under_referral: int = Field(description="kept here, but a higher tier was needed")
    agreed: int = Field(description="the doctor chose the recommended tier")
    doctor_higher: int = Field(description="the doctor chose a higher tier than recommended")
    doctor_lower: int = Field(description="the doctor chose a lower tier than recommended")
    over_referral_rate: float | None = None
    under_referral_rate: float | None = None
    agreement_rate: float | None = None
    cases: list[QualityCase] = Field(default_factory=list, description="the over- and under-referrals")


def _rate(num: int | None, den: int | None) -> float | None:
    return round(num / den, 3) if num is not None and den else None


def review(con: duckdb.DuckDBPyConnection, *, since: datetime | None = None) -> QualityReview:
    """The review over the site's decisions (those decided at or after ``since``, if given)."""
    counts = dict.fromkeys(COUNTS, 0)
    cases: list[QualityCase] = []
    if has_decision_tables(con):
        rows = con.execute(
            "SELECT d.decision_id, d.encounter_id, d.decided_at, d.recommended_tier, d.decision, d.referred_tier, "
            # The latest outcome that names referred_up decides (a correction overrides).
            "(SELECT json_extract_string(o.labels, '$.referred_up') FROM outcomes o WHERE o.decision_id = "
            "d.decision_id AND json_extract_string(o.labels, '$.referred_up') IS NOT NULL "
            "ORDER BY o.recorded_at DESC LIMIT 1) AS needed "
            "FROM decisions d WHERE ? IS NULL OR d.decided_at >= ? ORDER BY d.decided_at",
            [since, since]).fetchall()
        for decision_id, encounter_id, decided_at, recommended, decision, referred_tier, needed in rows:
            counts["decisions"] += 1
            chosen = referred_tier if decision == "refer" else "community"
            gap = TIER_RANK.get(chosen, 0) - TIER_RANK.get(recommended, 0)
            counts["agreed" if gap == 0 else "doctor_higher" if gap > 0 else "doctor_lower"] += 1
            if needed not in ("0", "1"):
                continue
            counts["with_outcome"] += 1
            counts["referred_with_outcome" if decision == "refer" else "kept_with_outcome"] += 1
            kind = ("over_referral" if decision == "refer" and needed == "0" else
                    "under_referral" if decision != "refer" and needed == "1" else None)
            if kind:
                counts[kind] += 1
                cases.append(QualityCase(decision_id=decision_id, encounter_id=encounter_id, decided_at=decided_at,
                                         kind=kind, recommended_tier=recommended, decision=decision,
                                         referred_tier=referred_tier))
    rates = {name: _rate(counts[num], counts[den]) for name, (num, den) in RATES.items()}
    return QualityReview(**counts, **rates, cases=cases)


def released_review(site_dir: Path, *, since: datetime | None = None) -> dict[str, object]:
    """The review as it may leave the clinic: aggregate counts only, with the site's small-number rules.

    A count below the site's ``min_n`` is suppressed (None), the others are rounded to the nearest
    ``COUNT_ROUNDING``; a rate is given only when both its counts are released, and is computed from
    the rounded counts, so it says nothing the released counts do not. No case, id or date leaves.
    """
    policy = load_site_policy(site_dir)
    if (Path(site_dir) / DB_NAME).exists():
        with SiteStore(site_dir, read_only=True) as store:
            full = review(store.connection, since=since)
    else:
        full = review(duckdb.connect(":memory:"), since=since)
    released: dict[str, object] = {}
    for name in COUNTS:
        value = getattr(full, name)
        released[name] = None if value < policy.min_n else int(round(value / COUNT_ROUNDING) * COUNT_ROUNDING)
    for total, parts in PARTITIONS.items():
        # Complementary suppression: one hidden part must not be recoverable by subtraction.
        shown = [p for p in parts if released[p] is not None]
        if released[total] is not None and len(shown) == len(parts) - 1:
            released[min(shown, key=lambda p: getattr(full, p))] = None
    for name, (num, den) in RATES.items():
        released[name] = _rate(released[num], released[den])  # type: ignore[arg-type]
    released["suppressed"] = [name for name in COUNTS if released[name] is None]
    released["min_n"], released["rounding"] = policy.min_n, COUNT_ROUNDING
    return released
