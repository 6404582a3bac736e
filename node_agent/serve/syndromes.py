"""Alerts on one scored visit: critical (triage level or referral risk) and infectious risk (syndromes).

The syndrome table is the one place the complaint + fever patterns live, versioned (``TABLE_VERSION``),
so that syndromic surveillance can later count the same syndromes the doctor was shown. A syndrome
matches the structured complaint category, or words in a free-text complaint when the visit has one
(``TEXT_FIELDS``), with a measured temperature at or above ``FEVER_AT_LEAST`` when it needs fever.
Critical alerts read the tier policy's ``critical_risk`` (``models.policy.TierPolicy``). Every alert
carries its reason in Chinese and English, naming the value and the threshold that raised it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from models.policy import TierPolicy

__all__ = ["CRITICAL_TRIAGE_AT_MOST", "FEVER_AT_LEAST", "SYNDROMES", "TABLE_VERSION", "TEXT_FIELDS", "Alert",
           "Syndrome", "critical_alerts", "evaluate", "infectious_flags"]

TABLE_VERSION = "2026.1"
FEVER_AT_LEAST = 37.5  # °C, axillary: the fever clinics' (发热门诊) screening line
CRITICAL_TRIAGE_AT_MOST = 2  # levels 1 (濒危) and 2 (危重) always alert, whatever the policy's tiers
TEXT_FIELDS = ("complaint_text",)  # free-text chief complaint, if the task has one


@dataclass(frozen=True)
class Syndrome:
    """One row of the surveillance table: a complaint pattern, with or without fever."""

    code: str
    title: dict[str, str]
    complaints: frozenset[str] = frozenset()  # values of the categorical ``complaint``
    words: tuple[str, ...] = ()  # lower-case substrings of a free-text complaint (zh and en)
    needs_fever: bool = True


SYNDROMES: tuple[Syndrome, ...] = (
    Syndrome("febrile_respiratory", {"zh": "发热伴呼吸道症状", "en": "fever with respiratory symptoms"},
             frozenset({"dyspnoea"}), ("咳嗽", "咳痰", "咽痛", "气促", "气短", "呼吸困难", "cough", "sore throat",
                                       "short of breath", "shortness of breath", "breathless")),
    Syndrome("febrile_gastrointestinal", {"zh": "发热伴消化道症状", "en": "fever with gastrointestinal symptoms"},
             frozenset({"abdominal_pain"}), ("腹痛", "呕吐", "vomit", "abdominal pain")),
    Syndrome("acute_diarrhoea", {"zh": "急性腹泻", "en": "acute diarrhoea"},
             words=("腹泻", "拉肚子", "水样便", "稀便", "diarrhoea", "diarrhea", "loose stool"), needs_fever=False),
    Syndrome("fever_rash", {"zh": "发热伴皮疹", "en": "fever with rash"},
             words=("皮疹", "出疹", "疹子", "疱疹", "rash", "spots")),
    Syndrome("undifferentiated_fever", {"zh": "发热待查", "en": "fever without a known source"},
             frozenset({"fever"}), ("发热", "发烧", "fever")),
)


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


def _fever(inputs: Mapping[str, Any]) -> float | None:
    value = inputs.get("temperature")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _matched_words(syndrome: Syndrome, inputs: Mapping[str, Any]) -> list[str]:
    texts = " ".join(str(inputs[f]).lower() for f in TEXT_FIELDS if isinstance(inputs.get(f), str))
    return [w for w in syndrome.words if w in texts]


def infectious_flags(inputs: Mapping[str, Any]) -> list[Alert]:
    """The syndromes of ``SYNDROMES`` this visit matches (an unrecorded temperature never counts as fever)."""
    temperature = _fever(inputs)
    febrile = temperature is not None and temperature >= FEVER_AT_LEAST
    flags, fever_named = [], False
    for syndrome in SYNDROMES:
        # One febrile syndrome is enough: the table lists the specific ones before "fever without a source".
        if syndrome.needs_fever and (not febrile or fever_named):
            continue
        by_category = inputs.get("complaint") in syndrome.complaints
        words = _matched_words(syndrome, inputs)
        if not (by_category or words):
            continue
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
        fever_named = fever_named or syndrome.needs_fever
    return flags


def evaluate(inputs: Mapping[str, Any], triage_level: str | int, risk: float, policy: TierPolicy) -> list[Alert]:
    """Every alert for one scored visit: critical first, then infectious."""
    return critical_alerts(triage_level, risk, policy) + infectious_flags(inputs)
