"""Alerts on one scored visit: critical (triage level or referral risk) and infectious risk (syndromes).

The syndromes come from the one versioned table in ``models.syndromes`` (``TABLE_VERSION``), which
syndromic surveillance counts at the sites too (``node_agent.surveillance``): the doctor is flagged
for the same syndromes the commission's series count. Critical alerts read the tier policy's
``critical_risk`` (``models.policy.TierPolicy``). Every alert carries its reason in Chinese and
English, naming the value and the threshold that raised it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

from models.policy import TierPolicy
from models.syndromes import (
    FEVER_AT_LEAST,
    SYNDROMES,
    TABLE_VERSION,
    TEXT_FIELDS,
    Syndrome,
    match_syndromes,
)

__all__ = ["CRITICAL_TRIAGE_AT_MOST", "FEVER_AT_LEAST", "SYNDROMES", "TABLE_VERSION", "TEXT_FIELDS", "Alert",
           "Syndrome", "critical_alerts", "evaluate", "infectious_flags"]

CRITICAL_TRIAGE_AT_MOST = 2  # levels 1 (濒危) and 2 (危重) always alert, whatever the policy's tiers


class Alert(BaseModel):
    """One alert shown with the assessment (and on the referral slip)."""

    kind: Literal["critical", "infectious"]
    code: str = Field(description="'triage', 'risk' or a syndrome code of the surveillance table")
    title: dict[str, str]
    reason: dict[str, str] = Field(description="why, naming the value and the threshold")
    table_version: str | None = Field(None, description="the syndrome table's version (infectious flags)")


def critical_alerts(triage_level: str | int, risk: float, policy: TierPolicy) -> list[Alert]:
    """Triage level 1-2, or a referral risk at or above the policy's critical threshold."""
    alerts = []
    level = int(triage_level)
    if level <= CRITICAL_TRIAGE_AT_MOST:
        alerts.append(Alert(kind="critical", code="triage", title={"zh": "危急：分诊等级", "en": "Critical: triage level"},
                            reason={"zh": f"预测分诊等级 {level} 级（≤{CRITICAL_TRIAGE_AT_MOST} 级为危急），请立即处置。",
                                    "en": f"Predicted triage level {level} (level ≤ {CRITICAL_TRIAGE_AT_MOST} is "
                                          "critical): act now."}))
    threshold = policy.critical_risk_at_least
    if risk >= threshold:
        alerts.append(Alert(kind="critical", code="risk", title={"zh": "危急：上转风险", "en": "Critical: referral risk"},
                            reason={"zh": f"上转风险 {risk:.0%}，达到危急阈值（≥{threshold:.0%}，分级策略"
                                          f"“{policy.name}”）。",
                                    "en": f"Referral risk {risk:.0%} reaches the critical threshold (≥ {threshold:.0%}, "
                                          f"tier policy '{policy.name}')."}))
    return alerts


def infectious_flags(inputs: Mapping[str, Any]) -> list[Alert]:
    """The syndromes of ``SYNDROMES`` this visit matches (an unrecorded temperature never counts as fever)."""
    flags = []
    for match in match_syndromes(inputs):
        syndrome, words, temperature = match.syndrome, match.words, match.temperature
        what_zh = "、".join(words) if words else "主诉类别"
        what_en = ", ".join(words) if words else "complaint category"
        fever_zh = f"体温 {temperature:g}°C（≥{FEVER_AT_LEAST:g}°C）" if syndrome.needs_fever else ""
        fever_en = f"temperature {temperature:g} °C (≥ {FEVER_AT_LEAST:g} °C)" if syndrome.needs_fever else ""
        flags.append(Alert(
            kind="infectious", code=syndrome.code, table_version=TABLE_VERSION,
            title={"zh": f"传染病风险：{syndrome.title['zh']}", "en": f"Infectious risk: {syndrome.title['en']}"},
            reason={"zh": "，".join(filter(None, [fever_zh, f"主诉符合（{what_zh}）"])) + "：请按传染病预检分诊处置。",
                    "en": "; ".join(filter(None, [fever_en, f"complaint matches ({what_en})"]))
                    + ": follow infection-control triage."}))
    return flags


def evaluate(inputs: Mapping[str, Any], triage_level: str | int, risk: float, policy: TierPolicy) -> list[Alert]:
    """Every alert for one scored visit: critical first, then infectious."""
    return critical_alerts(triage_level, risk, policy) + infectious_flags(inputs)
