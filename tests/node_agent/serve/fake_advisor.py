"""``FakeAdvisor``: a deterministic test double of ``models.advisor``'s advisor.

Every answer is computed from the inputs (risk rises with heart rate, age and lower consciousness,
falls with SpO2; a missing SpO2 adds a little risk, as a missing indicator would), so a test can
recompute it and tell versions apart. It is not a clinical model.
"""

from __future__ import annotations

import math

from models.assessment import (
    TIERS,
    Assessment,
    Contribution,
    DiagnosisSuggestion,
    ModelRef,
    ReferralRisk,
    TierRecommendation,
    Triage,
)
from models.spec import TaskSpec, load_task

# feature -> (weight on the log-odds, reference value); categorical/boolean handled in _push
_NUMERIC = {"heart_rate": (0.03, 80.0), "spo2": (-0.25, 97.0), "age": (0.02, 50.0), "resp_rate": (0.08, 16.0),
            "temperature": (0.3, 37.0), "sbp": (-0.01, 125.0), "pain_score": (0.05, 3.0)}
_MISSING = {"spo2": 0.3, "heart_rate": 0.2}
_AVPU = {"A": 0.0, "V": 1.0, "P": 2.0, "U": 3.0}
_COMPLAINT_DX = {"chest_pain": "I00-I99", "dyspnoea": "J00-J99", "fever": "A00-B99", "abdominal_pain": "K00-K93",
                 "neuro": "G00-G99", "trauma": "S00-T98", "other": "R00-R99"}


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


class FakeAdvisor:
    """Test double: same interface as the real advisor; ``offset`` shifts every log-odds (a "new version")."""

    def __init__(self, version: str = "1", *, offset: float = 0.0) -> None:
        self.spec: TaskSpec = load_task("referral_risk")
        self.triage_spec, self.diagnosis_spec = load_task("triage"), load_task("diagnosis")
        self.version, self.offset = version, offset
        self.models = {task: ModelRef(name=f"fake-{task}", version=version)
                       for task in ("referral_risk", "triage", "diagnosis")}

    def pushes(self, record: dict[str, object]) -> dict[str, float]:
        """Each feature's push on the referral log-odds."""
        out: dict[str, float] = {}
        for name, (weight, ref) in _NUMERIC.items():
            value = record.get(name)
            out[name] = _MISSING.get(name, 0.0) if value is None else weight * (float(value) - ref)
        out["avpu"] = 0.9 * _AVPU.get(str(record.get("avpu")), 0.0)
        out["arrival"] = 0.8 if record.get("arrival") == "ambulance" else 0.0
        out["hx_heart_disease"] = 0.4 if record.get("hx_heart_disease") is True else 0.0
        return out

    def log_odds(self, record: dict[str, object]) -> float:
        return -1.5 + self.offset + sum(self.pushes(record).values())

    def referral_probability(self, record: dict[str, object]) -> float:
        return _sigmoid(self.log_odds(record))

    def _triage(self, z: float) -> Triage:
        cuts = [2.5, 1.0, -0.5, -2.0]  # urgency above each cut -> more urgent level
        level = str(1 + sum(z < c for c in cuts))
        weights = {str(k): math.exp(-abs(k - int(level))) for k in range(1, 6)}
        total = sum(weights.values())
        return Triage(level=level, title=self.triage_spec.label.class_display[level],
                      probabilities={k: w / total for k, w in weights.items()})

    def _diagnoses(self, record: dict[str, object]) -> list[DiagnosisSuggestion]:
        main = _COMPLAINT_DX.get(str(record.get("complaint")), "R00-R99")
        scores = {c: (3.0 if c == main else 1.0 if c == "R00-R99" else 0.3) for c in self.diagnosis_spec.label.classes}
        total = sum(scores.values())
        ranked = sorted(scores, key=lambda c: (-scores[c], c))[:3]
        return [DiagnosisSuggestion(code=c, title=self.diagnosis_spec.label.class_display[c],
                                    probability=scores[c] / total) for c in ranked]

    def assess(self, records: list[dict[str, object]]) -> list[Assessment]:
        answers = []
        for record in records:
            z, pushes = self.log_odds(record), self.pushes(record)
            p = _sigmoid(z)
            tier = "tertiary" if p >= 0.6 else "county" if p >= 0.25 else "community"
            reason = {"zh": f"转诊风险 {p:.0%}（≥25% 建议县级，≥60% 建议三级）",
                      "en": f"referral risk {p:.0%} (≥25% county, ≥60% tertiary)"}
            top = sorted(pushes, key=lambda n: -abs(pushes[n]))[:6]
            explanation = [Contribution(feature=n, title=self.spec.feature(n).display, value=_shown(record.get(n)),
                                        contribution=pushes[n], direction="up" if pushes[n] > 0 else "down")
                           for n in top if pushes[n] != 0]
            answers.append(Assessment(
                triage=self._triage(z), referral_risk=ReferralRisk(probability=p),
                tier=TierRecommendation(tier=tier, title=TIERS[tier], reason=reason),
                diagnoses=self._diagnoses(record), explanation=explanation, models=dict(self.models)))
        return answers

    def model_card(self, task: str, lang: str = "en") -> str:
        return (f"# fake-{task} v{self.version}\n\nA **test double**, not a clinical model.\n\n"
                f"- task: {task}\n- version: {self.version}\n- offset: {self.offset}\n")


def _shown(value: object) -> str | float | None:
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return value  # type: ignore[return-value]
    return str(value)
