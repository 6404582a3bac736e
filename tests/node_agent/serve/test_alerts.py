"""The alert rules (node_agent.serve.syndromes) and the tier policy's critical threshold, one rule at a time."""

from __future__ import annotations

import pytest

from models.errors import PolicyError
from models.policy import TierPolicy, load_policy
from node_agent.serve.syndromes import (
    FEVER_AT_LEAST,
    SYNDROMES,
    TABLE_VERSION,
    critical_alerts,
    evaluate,
    infectious_flags,
)

POLICY = load_policy("default")


def codes(alerts) -> list[str]:
    return [a.code for a in alerts]


def test_the_default_policy_names_a_critical_threshold_above_the_tertiary_one():
    assert POLICY.critical_risk == pytest.approx(0.80)
    assert POLICY.critical_risk_at_least >= POLICY.tertiary.risk_at_least


def test_a_policy_without_a_critical_threshold_alerts_at_the_tertiary_one():
    old = TierPolicy.model_validate({"tertiary": {"triage_at_most": 1, "risk_at_least": 0.5},
                                     "county": {"triage_at_most": 2, "risk_at_least": 0.2}})
    assert old.critical_risk is None and old.critical_risk_at_least == 0.5
    assert codes(critical_alerts("4", 0.5, old)) == ["risk"]
    assert critical_alerts("4", 0.49, old) == []


def test_a_critical_threshold_below_the_tertiary_one_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("tertiary: {triage_at_most: 1, risk_at_least: 0.6}\ncounty: {triage_at_most: 2, risk_at_least: 0.2}\n"
                    "critical_risk: 0.5\n")
    with pytest.raises(PolicyError):
        load_policy(path)


@pytest.mark.parametrize(("level", "alerted"), [("1", True), ("2", True), ("3", False), ("5", False)])
def test_triage_levels_1_and_2_are_critical(level, alerted):
    alerts = critical_alerts(level, 0.05, POLICY)
    assert codes(alerts) == (["triage"] if alerted else [])
    if alerted:
        assert f"{level} 级" in alerts[0].reason["zh"] and f"level {level}" in alerts[0].reason["en"]


def test_risk_at_the_critical_threshold_alerts_and_says_why():
    (alert,) = critical_alerts("4", 0.80, POLICY)
    assert alert.kind == "critical" and alert.code == "risk"
    assert "80%" in alert.reason["zh"] and "≥80%" in alert.reason["zh"] and "default" in alert.reason["en"]
    assert critical_alerts("4", 0.79, POLICY) == []
    assert codes(critical_alerts("1", 0.95, POLICY)) == ["triage", "risk"]


@pytest.mark.parametrize(("visit", "expected"), [
    ({"temperature": 38.2, "complaint": "dyspnoea"}, ["febrile_respiratory"]),
    ({"temperature": FEVER_AT_LEAST, "complaint": "dyspnoea"}, ["febrile_respiratory"]),
    ({"temperature": 37.4, "complaint": "dyspnoea"}, []),  # below the fever line
    ({"temperature": None, "complaint": "fever"}, []),  # not measured is not fever
    ({"complaint": "fever"}, []),
    ({"temperature": 38.0, "complaint": "fever"}, ["undifferentiated_fever"]),
    ({"temperature": 38.0, "complaint": "abdominal_pain"}, ["febrile_gastrointestinal"]),
    ({"temperature": 39.0, "complaint": "chest_pain"}, []),
    ({"temperature": 36.8, "complaint": "other", "complaint_text": "腹泻三天，水样便"}, ["acute_diarrhoea"]),
    ({"temperature": 38.5, "complaint": "other", "complaint_text": "发烧两天，全身出疹"}, ["fever_rash"]),
    ({"temperature": 38.5, "complaint": "fever", "complaint_text": "fever and a dry COUGH"}, ["febrile_respiratory"]),
    ({"temperature": 38.5, "complaint": "abdominal_pain", "complaint_text": "腹痛 拉肚子"},
     ["febrile_gastrointestinal", "acute_diarrhoea"]),
    ({"temperature": 36.5, "complaint": "other", "complaint_text": "皮疹"}, []),  # a rash without fever
])
def test_syndromes(visit, expected):
    flags = infectious_flags(visit)
    assert codes(flags) == expected
    for flag in flags:
        assert flag.kind == "infectious" and flag.table_version == TABLE_VERSION
        assert flag.title["zh"].startswith("传染病风险") and flag.reason["en"]


def test_a_flag_names_the_words_and_the_temperature_that_matched():
    (flag,) = infectious_flags({"temperature": 38.6, "complaint": "other", "complaint_text": "咳嗽、咽痛"})
    assert "38.6°C" in flag.reason["zh"] and "咳嗽" in flag.reason["zh"] and "咽痛" in flag.reason["zh"]
    assert "38.6 °C" in flag.reason["en"]


def test_the_table_is_one_versioned_table_with_unique_codes():
    assert len({s.code for s in SYNDROMES}) == len(SYNDROMES)
    assert all(s.title["zh"] and s.title["en"] and (s.complaints or s.words) for s in SYNDROMES)
    assert all(w == w.lower() for s in SYNDROMES for w in s.words)  # matched against lower-cased text


def test_evaluate_lists_critical_alerts_before_infectious_flags():
    alerts = evaluate({"temperature": 39.1, "complaint": "dyspnoea"}, "2", 0.9, POLICY)
    assert [(a.kind, a.code) for a in alerts] == [("critical", "triage"), ("critical", "risk"),
                                                  ("infectious", "febrile_respiratory")]
    assert evaluate({"temperature": 36.6, "complaint": "chest_pain"}, "4", 0.1, POLICY) == []
