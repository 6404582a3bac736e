"""Doctors' decisions with outcomes become training rows, through ingest's checks, and the next
federated round trains on them."""

from __future__ import annotations

import json
import shutil

import duckdb
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fenji.cli import app as fenji_app
from models.spec import FeatureKind, TaskSpec
from node_agent.outcome_rows import OUTCOME_SOURCE, ingest_outcomes
from node_agent.serve import AdvisorHolder, Role, TokenStore, create_app
from node_agent.store import SiteStore
from simulation.synth import ClinicProfile, generate_clinic
from tests.node_agent.serve.fake_advisor import FakeAdvisor


def patients(spec: TaskSpec, n: int, seed: int) -> pd.DataFrame:
    return generate_clinic(ClinicProfile(f"outcomes_{seed}", max(n, 50)), np.random.default_rng(seed)).head(n)


def as_patient(spec: TaskSpec, row: pd.Series) -> dict:
    """One synthetic visit as the scoring API takes it (not-recorded values left out)."""
    patient = {}
    for f in spec.features:
        value = row.get(f.name)
        if value is None or pd.isna(value):
            continue
        patient[f.name] = (float(value) if f.kind is FeatureKind.NUMERIC else
                           bool(value) if f.kind is FeatureKind.BOOLEAN else str(value))
    return patient


def record_visits(site_dir, spec: TaskSpec, frame: pd.DataFrame, *, with_outcome: bool = True) -> list[str]:
    """Each visit scored, decided and (optionally) given its outcome through the API, as the page does."""
    tokens = TokenStore.for_site(site_dir)
    token = tokens.create(role=Role.DOCTOR, name="Dr Test").token
    client = TestClient(create_app(AdvisorHolder(FakeAdvisor()), site_dir=site_dir, tokens=tokens))
    client.headers["Authorization"] = f"Bearer {token}"
    ids = []
    for i, (_, row) in enumerate(frame.iterrows()):
        needed = str(int(row["referred_up"]))
        refer = needed == "1" if i % 3 else needed != "1"  # every third decision is a wrong one
        body = {"encounter_id": f"MZ-{site_dir.name}-{i}", "inputs": as_patient(spec, row),
                "assessment": {"models": {"referral_risk": {"name": "fenji-referral_risk", "version": "1"}},
                               "referral_risk": 0.3, "tier": "county", "triage_level": "3"},
                "decision": "refer" if refer else "treat_here", "referred_tier": "county" if refer else None}
        created = client.post("/api/v1/decisions", json=body)
        assert created.status_code == 201, created.text
        ids.append(created.json()["decision_id"])
        if with_outcome:
            outcome = client.post("/api/v1/outcomes", json={"decision_id": ids[-1], "referred_up": needed})
            assert outcome.status_code == 201, outcome.text
    return ids


def test_outcomes_are_ingested_with_ingest_checks(tmp_path, referral_spec):
    site = tmp_path / "clinic_outcomes"
    frame = patients(referral_spec, 12, seed=3)
    ids = record_visits(site, referral_spec, frame)
    record_visits(site, referral_spec, frame.head(2), with_outcome=False)  # waiting: not training rows
    # A row the API would refuse today (an edited file, an older version): ingest's checks catch it.
    with duckdb.connect(str(site / "site.duckdb")) as con:
        inputs = json.loads(con.execute("SELECT inputs FROM decisions WHERE decision_id = ?", [ids[0]]).fetchone()[0])
        con.execute("UPDATE decisions SET inputs = ? WHERE decision_id = ?",
                    [json.dumps({**inputs, "age": 300}), ids[0]])

    with SiteStore(site) as store:
        done = ingest_outcomes(store, referral_spec)
        assert (done.summary.accepted, done.summary.quarantined, done.without_label) == (11, 1, 0)
        assert store.count(referral_spec) == 11
        (reason, source, record_id), = store.connection.execute(
            "SELECT reason, source_file, record_id FROM quarantine").fetchall()
        assert reason.startswith("age: 300") and "outside the valid range" in reason
        assert (source, record_id) == (OUTCOME_SOURCE, f"outcome:{ids[0]}")
        summary = store.summary(referral_spec.name).set_index("source")
        assert summary.loc[OUTCOME_SOURCE, "accepted"] == 11 and summary.loc[OUTCOME_SOURCE, "quarantined"] == 1
        stored = store.load(referral_spec).set_index("record_id")
        expected = frame.iloc[1]
        assert stored.loc[f"outcome:{ids[1]}", "referred_up"] == str(expected["referred_up"])
        assert stored.loc[f"outcome:{ids[1]}", "heart_rate"] == pytest.approx(expected["heart_rate"])
        # Nothing new: the same rows again are already ingested, and add nothing.
        again = ingest_outcomes(store, referral_spec)
        assert again.summary.already_ingested and store.count(referral_spec) == 11
        # The triage task has no outcome label yet for these decisions: nothing ingested, nothing quarantined.
        from models.spec import load_task

        triage = ingest_outcomes(store, load_task("triage"))
        assert (triage.summary.rows_read, triage.without_label) == (0, 12)


def test_a_round_after_recorded_outcomes_trains_on_more_rows(small_federation, referral_spec, tmp_path):
    from simulation.engine import run_simulated_federation

    sites = []
    for source in small_federation[:3]:  # copies: the session's sites stay as they are
        shutil.copytree(source, tmp_path / "sites" / source.name, ignore=shutil.ignore_patterns("*.wal"))
        sites.append(tmp_path / "sites" / source.name)
    before = run_simulated_federation(referral_spec, sites, rounds=1, encrypt=False, keyholder_home=tmp_path / "kh")

    frame = patients(referral_spec, 60, seed=11)
    record_visits(sites[0], referral_spec, frame)
    result = CliRunner().invoke(fenji_app, ["node", "ingest-outcomes", "--site-dir", str(sites[0]),
                                            "--task", "referral_risk"])
    assert result.exit_code == 0, result.output
    assert "accepted 60" in result.output

    after = run_simulated_federation(referral_spec, sites, rounds=1, encrypt=False, keyholder_home=tmp_path / "kh")
    site_id = sites[0].name
    with SiteStore(sites[0], read_only=True) as store:
        train_outcomes = int(store.load(referral_spec, split="train")["record_id"].str.startswith("outcome:").sum())
    assert train_outcomes > 0
    assert after.train_rows[site_id] == before.train_rows[site_id] + train_outcomes
    for other in sites[1:]:
        assert after.train_rows[other.name] == before.train_rows[other.name]
    assert not np.allclose(after.flat, before.flat)
