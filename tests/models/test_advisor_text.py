"""The advisor with ``*_text`` models: a text feature is explained by the words of the patient's own
complaint (``models.explain.explain_text``'s words, with their signed contributions), and the input
the advisor reads is every feature any of its models reads."""

from __future__ import annotations

import numpy as np
import pytest

from models.explain import explain_text
from models.text import normalise
from tests.node_agent.serve.test_score import PATIENT
from tests.node_agent.serve.trained_advisor import trained_text_advisor

COMPLAINT = "发热三天，咳嗽咳痰，胸闷气促"


@pytest.fixture(scope="module")
def advisor():
    return trained_text_advisor()


def test_the_complaint_is_explained_by_its_own_words(advisor):
    record = {**dict.fromkeys(advisor.spec.feature_names), **PATIENT, "complaint_text": COMPLAINT}
    [answer] = advisor.assess([record])
    words = [c for c in answer.explanation if c.word]
    assert 1 <= len(words) <= advisor.explain_words and len(answer.explanation) <= advisor.explain_k
    assert all(c.feature == "complaint_text" and c.value in normalise(COMPLAINT) for c in words)
    assert not [c for c in answer.explanation if c.feature == "complaint_text" and not c.word]
    contributions = [abs(c.contribution) for c in answer.explanation]
    assert contributions == sorted(contributions, reverse=True)
    # The same words and contributions as explain_text finds from the record alone.
    referral = advisor.tasks["referral_risk"]
    expected = explain_text(referral.log_odds, referral.encoder, record, top=advisor.explain_words)["complaint_text"]
    got = [(c.value, c.contribution) for c in words]
    assert [w for w, _ in got] == [w for w, _ in expected]
    np.testing.assert_allclose([c for _, c in got], [c for _, c in expected], rtol=1e-4, atol=1e-6)


def test_a_record_without_text_says_the_complaint_was_not_recorded(advisor):
    [answer] = advisor.assess([{**PATIENT, "complaint_text": None}])
    assert not [c for c in answer.explanation if c.word]
    text = [c for c in answer.explanation if c.feature == "complaint_text"]
    assert all(c.value is None for c in text)


def test_other_words_change_the_words_shown_and_nothing_else_is_named(advisor):
    [a, b] = advisor.assess([{**PATIENT, "complaint_text": COMPLAINT},
                             {**PATIENT, "complaint_text": "右下腹痛伴呕吐"}])
    words_a = {c.value for c in a.explanation if c.word}
    words_b = {c.value for c in b.explanation if c.word}
    assert words_b and all(w in "右下腹痛伴呕吐" for w in words_b) and not words_a & words_b


def test_the_input_is_every_feature_any_model_reads():
    """A ``triage_text`` model next to a referral model without text: the text is an input (optional),
    triage reads it, and the referral explanation has no words (its model ignores the text)."""
    advisor = trained_text_advisor(text_tasks=("triage",))
    assert "complaint_text" in advisor.spec.feature_names and not advisor.spec.feature("complaint_text").required
    assert "complaint_text" not in advisor.tasks["referral_risk"].spec.feature_names
    with_text, without = advisor.assess([{**PATIENT, "complaint_text": "胸口压榨样痛2小时，大汗"},
                                         {**PATIENT, "complaint_text": None}])
    assert with_text.triage.probabilities != without.triage.probabilities
    assert with_text.referral_risk.probability == without.referral_risk.probability
    assert not [c for c in with_text.explanation if c.word or c.feature == "complaint_text"]
