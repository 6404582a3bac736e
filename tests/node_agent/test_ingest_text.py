"""Free-text complaints reach the site's DuckDB through ingest (issue 16): kept as written, UTF-8 and
GBK exports alike, and an over-long cell is quarantined with its reason."""

from __future__ import annotations

import pandas as pd

from models.spec import load_task
from node_agent.ingest import MAX_TEXT, ingest_file
from node_agent.mapping import load_mapping
from node_agent.store import SiteStore
from simulation.synth import write_federation


def test_text_complaints_are_ingested_as_written(tmp_path):
    spec = load_task("referral_risk_text")
    exports = write_federation(tmp_path / "exports", seed=3, bad_rows=False)
    for name, path, mapping in exports[:2] + [e for e in exports if e[2] is not None][:1]:
        with SiteStore(tmp_path / "sites" / name) as store:
            summary = ingest_file(store, spec, path, load_mapping(mapping))
            frame = store.load(spec, split="train")
        assert summary.accepted > 0 and summary.quarantined == 0
        texts = frame["complaint_text"].dropna()
        assert len(texts) > 0.5 * len(frame)
        assert texts.str.contains(r"[\u4e00-\u9fff]").any()  # Chinese kept as written, GBK exports included


def test_an_overlong_complaint_is_quarantined_with_its_reason(tmp_path):
    spec = load_task("referral_risk_text")
    name, path, mapping = write_federation(tmp_path / "exports", seed=3, bad_rows=False)[0]
    frame = pd.read_csv(path)
    column = next(c for c in frame.columns if "text" in c or "主诉描述" in c)
    frame.loc[0, column] = "咳" * (MAX_TEXT + 1)
    frame.to_csv(path, index=False)
    with SiteStore(tmp_path / "site") as store:
        summary = ingest_file(store, spec, path, load_mapping(mapping))
    assert summary.quarantined == 1
    assert any("text longer than" in reason for reason in summary.reasons)


def test_the_scoring_api_takes_the_complaint_as_text_and_bounds_it():
    import pydantic
    import pytest

    from node_agent.serve.inputs import MAX_TEXT_CHARS, example_patient, patient_model

    spec = load_task("referral_risk_text")
    model = patient_model(spec)
    patient = example_patient(spec)
    assert isinstance(patient["complaint_text"], str)
    assert model.model_validate(patient).complaint_text == patient["complaint_text"]
    assert model.model_validate(patient | {"complaint_text": None}).complaint_text is None
    with pytest.raises(pydantic.ValidationError):
        model.model_validate(patient | {"complaint_text": "咳" * (MAX_TEXT_CHARS + 1)})
