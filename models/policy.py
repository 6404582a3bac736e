"""The tier recommendation: from the triage level and the calibrated referral risk, with thresholds
that belong to the model's governance settings (``models/policies/*.yaml`` or a commission's own
file, named by ``FENJI_TIER_POLICY``), and a plain-language reason in Chinese and English.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.assessment import TIERS, TierRecommendation
from models.errors import PolicyError
from models.yamlfile import load_yaml_model

__all__ = ["PolicyError", "TierPolicy", "TierRule", "load_policy", "recommend_tier"]

POLICIES_DIR = Path(__file__).parent / "policies"


class TierRule(BaseModel):
    """Send the patient to this tier if the triage level is at most ``triage_at_most`` (more urgent)
    or the referral risk is at least ``risk_at_least``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    triage_at_most: int = Field(ge=0, le=5, description="0 disables the triage condition")
    risk_at_least: float = Field(gt=0, le=1.0001, description="above 1 disables the risk condition")


class TierPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "default"
    tertiary: TierRule
    county: TierRule
    critical_risk: float | None = Field(
        None, gt=0, le=1.0001, description="referral risk at or above which the workstation shows a critical "
        "alert; None (a policy written before it existed): the tertiary risk threshold")

    @model_validator(mode="after")
    def _tertiary_is_stricter(self) -> TierPolicy:
        if self.tertiary.risk_at_least < self.county.risk_at_least:
            raise ValueError("the tertiary risk threshold must not be below the county one")
        if self.tertiary.triage_at_most > self.county.triage_at_most:
            raise ValueError("the tertiary triage threshold must not be less urgent than the county one")
        if self.critical_risk is not None and self.critical_risk < self.tertiary.risk_at_least:
            raise ValueError("the critical risk threshold must not be below the tertiary one")
        return self

    @property
    def critical_risk_at_least(self) -> float:
        """The critical-alert risk threshold in force (the tertiary one when the policy names none)."""
        return self.tertiary.risk_at_least if self.critical_risk is None else self.critical_risk


def load_policy(path: str | Path | None = None) -> TierPolicy:
    """A policy file or a built-in policy name (None: the built-in default). Which one governs a
    city is the coordinator's setting (``FENJI_TIER_POLICY``, ``coordinator.settings``)."""
    if path is None:  # the built-in default, never a file or folder named "default" where the process runs
        return load_yaml_model(POLICIES_DIR / "default.yaml", TierPolicy, PolicyError, "tier policy")
    candidate = Path(path)
    if not candidate.suffix and not candidate.exists():
        candidate = POLICIES_DIR / f"{path}.yaml"
    return load_yaml_model(candidate, TierPolicy, PolicyError, "tier policy")


def _pct(p: float) -> str:
    return f"{100 * p:.0f}%"


def recommend_tier(triage_level: int, risk: float, policy: TierPolicy) -> TierRecommendation:
    """The tier a patient should be seen at, and why, under ``policy``.

    The answer depends on the risk only through the thresholds it reaches and its rounded percentage
    (quoted in the reason), so answers are cached on those: scoring many patients builds few."""
    reaches = (risk >= policy.tertiary.risk_at_least, risk >= policy.county.risk_at_least)
    return _recommend(int(triage_level), _pct(risk), reaches, policy)


@functools.lru_cache(maxsize=4096)
def _recommend(triage_level: int, risk: str, reaches: tuple[bool, bool], policy: TierPolicy) -> TierRecommendation:
    for tier, reached in zip(("tertiary", "county"), reaches):
        rule: TierRule = getattr(policy, tier)
        zh_tier, en_tier = TIERS[tier]["zh"], TIERS[tier]["en"]
        if triage_level <= rule.triage_at_most:
            return TierRecommendation(tier=tier, title=TIERS[tier], reason={
                "zh": f"分诊等级 {triage_level} 级，达到{zh_tier}标准（≤{rule.triage_at_most} 级）。",
                "en": f"Triage level {triage_level} meets the {en_tier.lower()} threshold (level ≤ {rule.triage_at_most}).",
            })
        if reached:
            return TierRecommendation(tier=tier, title=TIERS[tier], reason={
                "zh": f"上转风险 {risk}，达到{zh_tier}阈值（≥{_pct(rule.risk_at_least)}）。",
                "en": f"Referral risk {risk} reaches the {en_tier.lower()} threshold (≥ {_pct(rule.risk_at_least)}).",
            })
    county = policy.county
    return TierRecommendation(tier="community", title=TIERS["community"], reason={
        "zh": (f"分诊等级 {triage_level} 级、上转风险 {risk}，均未达到上转标准"
               f"（≤{county.triage_at_most} 级或 ≥{_pct(county.risk_at_least)}），可在社区诊治。"),
        "en": (f"Triage level {triage_level} and referral risk {risk} are below the referral thresholds "
               f"(level ≤ {county.triage_at_most} or risk ≥ {_pct(county.risk_at_least)}): can be treated here."),
    })
