"""What Fenji answers about one patient: the shape of a scoring result, shared by the advisor
(``models.advisor``), the scoring API and the workstation page.

Every display text comes in the languages the page offers (``zh`` first, then ``en``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Assessment",
    "Contribution",
    "DiagnosisSuggestion",
    "ModelRef",
    "ReferralRisk",
    "TierRecommendation",
    "Triage",
    "Tier",
    "TIERS",
    "DISCLAIMER",
]

Text = dict[str, str]  # language code ("zh", "en") -> text
Tier = Literal["community", "county", "tertiary"]
TIERS: dict[str, Text] = {
    "community": {"zh": "社区卫生服务中心（基层）", "en": "Community clinic"},
    "county": {"zh": "县/区级医院", "en": "County/district hospital"},
    "tertiary": {"zh": "三级医院", "en": "Tertiary hospital"},
}
DISCLAIMER: Text = {
    "zh": "本结果为辅助决策建议，不能替代医生的临床判断。",
    "en": "This supports, and does not replace, the doctor's clinical judgement.",
}


class Triage(BaseModel):
    level: str = Field(description="predicted triage level, '1' (most urgent) to '5'")
    title: Text
    probabilities: dict[str, float] = Field(description="level -> probability; sums to 1")


class ReferralRisk(BaseModel):
    probability: float = Field(ge=0, le=1, description="calibrated probability of needing a higher tier")
    calibrated: bool = True
    personalised: bool = Field(False, description="answered by this clinic's personalised model (see models)")


class TierRecommendation(BaseModel):
    model_config = ConfigDict(frozen=True)  # shared between answers (``recommend_tier`` caches them)

    tier: Tier
    title: Text
    reason: Text = Field(description="plain-language reason, naming the thresholds that decided it")


class DiagnosisSuggestion(BaseModel):
    code: str = Field(description="ICD-10 chapter range, e.g. 'I00-I99'")
    title: Text
    probability: float


class Contribution(BaseModel):
    feature: str
    title: Text
    value: str | float | None = Field(description="the patient's value, None if not recorded; with `word`, "
                                      "one word (or run of characters) of the patient's own free text")
    contribution: float = Field(description="push on the referral-risk log-odds; > 0 raises the risk")
    direction: Literal["up", "down"]
    word: bool = Field(False, description="a word of the free-text feature `feature` (from this patient's own "
                       "text, never from a vocabulary), rather than the whole feature")


class ModelRef(BaseModel):
    name: str
    version: str
    card_url: str | None = None
    # A clinic's personalised model (it never leaves the clinic): how it was adapted and the global
    # version it was derived from. Absent (defaults) for the global model.
    personalised: bool = False
    method: str | None = Field(None, description="personalisation method, e.g. 'site-intercepts'")
    base_version: str | None = Field(None, description="the global version a personalised model came from")


class Assessment(BaseModel):
    triage: Triage
    referral_risk: ReferralRisk
    tier: TierRecommendation
    diagnoses: list[DiagnosisSuggestion] = Field(description="top suggestions, most likely first")
    explanation: list[Contribution] = Field(description="features that pushed the referral risk most")
    models: dict[str, ModelRef] = Field(description="task -> model version that produced its part")
    disclaimer: Text = Field(default_factory=lambda: dict(DISCLAIMER))
