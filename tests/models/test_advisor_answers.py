"""The trained advisor's answers are well-formed whatever the patient (complete, minimal, an unknown
category), the same alone as in a batch, and its closed-form explanation is the generic occlusion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.assessment import Assessment
from models.explain import occlusion_contributions
from models.spec import load_task
from node_agent.serve.inputs import example_patient
from tests.node_agent.serve.test_score import PATIENT
from tests.node_agent.serve.trained_advisor import trained_advisor


@pytest.fixture(scope="module")
def advisor():
    return trained_advisor()


def _patients(spec) -> dict[str, dict]:
    every = [f.name for f in spec.features]
    return {
        "complete": dict(PATIENT),
        "example": example_patient(spec),
        "required only": example_patient(spec, complete=False),
        "required only, the rest null": {f.name: example_patient(spec)[f.name] if f.required else None
                                         for f in spec.features},
        "empty": {},
        "unknown category": {**PATIENT, "complaint": "headache", "avpu": "confused"},
        "every feature null": {name: None for name in every},
        "extreme": {**PATIENT, "age": 120, "heart_rate": 250, "spo2": 50, "temperature": 43, "avpu": "U",
                    "arrival": "ambulance"},
    }


def _check(answer: Assessment, advisor, record: dict) -> None:
    assert isinstance(answer, Assessment)
    assert Assessment.model_validate(answer.model_dump()) == answer
    assert Assessment.model_validate_json(answer.model_dump_json()) == answer

    triage = answer.triage
    probs = triage.probabilities
    assert list(probs) == advisor.tasks["triage"].spec.label.classes
    assert all(0 <= p <= 1 for p in probs.values())
    assert math.fsum(probs.values()) == pytest.approx(1.0, abs=1e-6)
    assert triage.level in probs and triage.title["zh"] and triage.title["en"]

    assert 0 <= answer.referral_risk.probability <= 1
    assert answer.tier.tier in {"community", "county", "tertiary"}

    diagnoses = answer.diagnoses
    assert len(diagnoses) == advisor.top_k
    d_probs = [d.probability for d in diagnoses]
    assert d_probs == sorted(d_probs, reverse=True)
    assert len({d.code for d in diagnoses}) == len(diagnoses)
    assert {d.code for d in diagnoses} <= set(advisor.tasks["diagnosis"].spec.label.classes)

    explanation = answer.explanation
    assert 0 < len(explanation) <= advisor.explain_k
    sizes = [abs(c.contribution) for c in explanation]
    assert sizes == sorted(sizes, reverse=True)
    feature_names = {f.name for f in advisor.spec.features}
    assert len({c.feature for c in explanation}) == len(explanation)
    for c in explanation:
        assert c.feature in feature_names
        assert c.contribution != 0 and math.isfinite(c.contribution)
        assert c.direction == ("up" if c.contribution > 0 else "down"), c
        if record.get(c.feature) is None:
            assert c.value is None, c  # not recorded is shown as not recorded, never a typical value

    assert set(answer.models) == {"triage", "diagnosis", "referral_risk"}


@pytest.mark.parametrize("name", list(_patients(load_task("referral_risk"))))
def test_each_answer_is_well_formed(advisor, name):
    record = _patients(advisor.spec)[name]
    (answer,) = advisor.assess([record])
    _check(answer, advisor, record)


def test_a_missing_feature_is_not_scored_as_a_typical_value(advisor):
    """Leaving every optional feature out is not the same patient as giving them all."""
    spec = advisor.spec
    complete, minimal = example_patient(spec), example_patient(spec, complete=False)
    (a,), (b,) = advisor.assess([complete]), advisor.assess([minimal])
    assert a.referral_risk.probability != b.referral_risk.probability
    assert b.explanation and all(c.value is None for c in b.explanation if c.feature not in minimal)
    # absent and null are the same thing: "not recorded" (the same record, so exactly the same answer)
    nulls = {**minimal, **{f.name: None for f in spec.features if not f.required}}
    (c,) = advisor.assess([nulls])
    assert c == b


def test_an_unknown_category_is_scored_like_no_known_value(advisor):
    """An unknown value lights no one-hot column; it is neither a known category nor 'not recorded'."""
    spec = advisor.spec
    unknown = {**PATIENT, "complaint": "headache"}
    known = [{**PATIENT, "complaint": v} for f in spec.features if f.name == "complaint" for v in f.values]
    answers = advisor.assess([unknown, *known])
    risks = [a.referral_risk.probability for a in answers]
    assert all(math.isfinite(r) for r in risks)
    assert risks[0] not in risks[1:]
    x = advisor.tasks["referral_risk"].encode([unknown])
    cols = advisor.tasks["referral_risk"].encoder.feature_slices()["complaint"]
    assert not x[0, cols].any()


def _assert_same(a: Assessment, b: Assessment) -> None:
    assert a.triage.level == b.triage.level
    assert list(a.triage.probabilities) == list(b.triage.probabilities)
    assert list(a.triage.probabilities.values()) == pytest.approx(list(b.triage.probabilities.values()),
                                                                  rel=1e-9, abs=1e-12)
    assert a.referral_risk.probability == pytest.approx(b.referral_risk.probability, rel=1e-9, abs=1e-12)
    assert a.referral_risk.calibrated == b.referral_risk.calibrated
    assert a.tier == b.tier
    assert [d.code for d in a.diagnoses] == [d.code for d in b.diagnoses]
    assert [d.probability for d in a.diagnoses] == pytest.approx([d.probability for d in b.diagnoses],
                                                                 rel=1e-9, abs=1e-12)
    assert [(c.feature, c.value, c.direction) for c in a.explanation] == \
        [(c.feature, c.value, c.direction) for c in b.explanation]
    assert [c.contribution for c in a.explanation] == pytest.approx([c.contribution for c in b.explanation],
                                                                    rel=1e-9, abs=1e-12)
    assert a.models == b.models


def test_a_batch_answers_each_patient_as_alone(advisor):
    fixed = list(_patients(advisor.spec).values())
    rng = np.random.default_rng(11)
    varied = [{**PATIENT, "age": float(rng.integers(0, 100)), "heart_rate": float(rng.integers(40, 180)),
               "spo2": None if i % 4 == 0 else float(rng.integers(80, 100)),
               "complaint": ["chest_pain", "fever", "trauma", "neuro"][i % 4]} for i in range(20)]
    patients = fixed + varied
    together = advisor.assess(patients)
    assert len(together) == len(patients)
    for patient, answer in zip(patients, together):
        (alone,) = advisor.assess([patient])
        _assert_same(answer, alone)
    # and the order of the batch does not matter
    reversed_answers = advisor.assess(patients[::-1])[::-1]
    for a, b in zip(together, reversed_answers):
        _assert_same(a, b)


def test_no_patients_no_answers(advisor):
    assert advisor.assess([]) == []


def test_closed_form_explanation_is_the_occlusion(advisor):
    model = advisor.tasks["referral_risk"]
    patients = list(_patients(advisor.spec).values())
    x = model.encode(patients)
    log_odds, contributions, names = model.explain(x)
    o_log_odds, o_contributions, o_names = occlusion_contributions(
        model.log_odds, x, model.baseline, model.encoder.feature_slices())
    assert names == o_names
    assert contributions.shape == (len(patients), len(names))
    np.testing.assert_allclose(log_odds, o_log_odds, rtol=0, atol=1e-6)
    np.testing.assert_allclose(contributions, o_contributions, rtol=0, atol=1e-6)
    # the contributions add up to the whole move from the baseline patient
    baseline_log_odds = model.log_odds(np.asarray(model.baseline, dtype=np.float32)[None, :])[0]
    np.testing.assert_allclose(contributions.sum(axis=1), log_odds - baseline_log_odds, rtol=0, atol=1e-6)
    # and they are what the advisor reports, feature by feature
    answers = advisor.assess(patients)
    for i, answer in enumerate(answers):
        for c in answer.explanation:
            assert c.contribution == pytest.approx(contributions[i, names.index(c.feature)], abs=1e-9)
        assert answer.referral_risk.probability == pytest.approx(1 / (1 + math.exp(-log_odds[i])), abs=1e-12)
