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


def _spoil(site, decision_id: str) -> None:
    """A stored decision edited to a value the API refuses (as an edited file or an older version would)."""
    with duckdb.connect(str(site / "site.duckdb")) as con:
        inputs = json.loads(con.execute("SELECT inputs FROM decisions WHERE decision_id = ?", [decision_id]).fetchone()[0])
        con.execute("UPDATE decisions SET inputs = ? WHERE decision_id = ?", [json.dumps({**inputs, "age": 300}),
                                                                              decision_id])


def _outcome_audit(site) -> list[dict]:
    from node_agent.budget import node_audit

    return [e for e in node_audit(site).entries() if e["action"].startswith("ingest-outcomes")]


def test_a_run_start_ingests_only_pending_outcomes_once_and_audits_it(tmp_path, referral_spec):
    from node_agent.outcome_rows import ingest_pending_outcomes, pending_outcomes

    site = tmp_path / "clinic_pending"
    assert ingest_pending_outcomes(site, referral_spec) is None  # no store at all: nothing to do
    ids = record_visits(site, referral_spec, patients(referral_spec, 8, seed=5))
    record_visits(site, referral_spec, patients(referral_spec, 2, seed=6), with_outcome=False)
    _spoil(site, ids[0])
    with SiteStore(site, read_only=True) as store:
        assert pending_outcomes(store, referral_spec) == 8
    done = ingest_pending_outcomes(site, referral_spec)
    assert done is not None and (done.summary.accepted, done.summary.quarantined) == (7, 1)
    with SiteStore(site, read_only=True) as store:
        assert pending_outcomes(store, referral_spec) == 0  # the quarantined one waits for a fix, not a run
        assert store.count(referral_spec) == 7
        log_lines = len(store.summary(referral_spec.name))
    assert ingest_pending_outcomes(site, referral_spec) is None  # the next run: nothing new, nothing written
    with SiteStore(site, read_only=True) as store:
        assert len(store.summary(referral_spec.name)) == log_lines
    (entry,) = _outcome_audit(site)
    assert entry["actor"] == "node" and entry["action"] == "ingest-outcomes"
    assert (entry["details"]["accepted"], entry["details"]["quarantined"]) == (7, 1)
    record_visits(site, referral_spec, patients(referral_spec, 3, seed=7))
    assert ingest_pending_outcomes(site, referral_spec).summary.accepted == 3
    assert [e["details"]["accepted"] for e in _outcome_audit(site)] == [7, 3]


def test_a_store_held_by_another_process_defers_the_outcomes_to_the_next_run(tmp_path, referral_spec):
    import subprocess
    import sys

    from node_agent.outcome_rows import ingest_pending_outcomes

    site = tmp_path / "clinic_busy"
    record_visits(site, referral_spec, patients(referral_spec, 4, seed=8))
    hold = "import duckdb, sys; con = duckdb.connect(sys.argv[1]); print('held', flush=True); sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(site / "site.duckdb")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert ingest_pending_outcomes(site, referral_spec, busy_timeout=0.2) is None
    finally:
        holder.communicate("")
    (deferred,) = _outcome_audit(site)
    assert deferred["action"] == "ingest-outcomes-deferred" and deferred["details"]["task"] == "referral_risk"
    assert ingest_pending_outcomes(site, referral_spec).summary.accepted == 4  # the next run takes them


def test_a_fixed_split_trains_on_outcome_rows_and_keeps_its_test_rows(site_store, referral_spec):
    path = site_store.site_dir / "visits.csv"
    rows = patients(referral_spec, 40, seed=9)
    rows.to_csv(path, index=False)
    from node_agent.ingest import ingest_file
    from node_agent.mapping import Mapping, RecordIdRule

    ingest_file(site_store, referral_spec, path, Mapping(record_id=RecordIdRule(columns=["encounter_id"])))
    ids = site_store.load(referral_spec)["record_id"]
    site_store.set_split(referral_spec, pd.DataFrame({"record_id": ids, "split": ["test"] * 10 + ["train"] * 30}))
    site_store.connection.execute(f"INSERT INTO {site_store.table_name(referral_spec)} (record_id, referred_up) "
                                  "VALUES ('outcome:abc', '1'), ('later-export-row', '0')")
    train = set(site_store.load(referral_spec, split="train")["record_id"])
    test = set(site_store.load(referral_spec, split="test")["record_id"])
    assert "outcome:abc" in train and len(train) == 31 and test == set(ids[:10])
    assert "later-export-row" not in train | test  # an export row the fixed split does not name stays out


def test_each_run_trains_on_the_outcomes_recorded_before_it_with_a_fixed_split(small_federation, referral_spec,
                                                                                tmp_path):
    """No command in between: the node turns the outcomes into rows as the run starts, and a site
    with a fixed split (a benchmark's) trains on them while its test rows stay the same."""
    from simulation.engine import run_simulated_federation

    sites = []
    for source in small_federation[:3]:
        shutil.copytree(source, tmp_path / "sites" / source.name, ignore=shutil.ignore_patterns("*.wal"))
        sites.append(tmp_path / "sites" / source.name)
    with SiteStore(sites[0]) as store:  # the split the hash gives, fixed as the site's own
        split = pd.concat([store.load(referral_spec, split=side)[["record_id"]].assign(split=side)
                           for side in ("train", "test")])
        store.set_split(referral_spec, split)
    before = run_simulated_federation(referral_spec, sites, rounds=1, encrypt=False, keyholder_home=tmp_path / "kh")

    ids = record_visits(sites[0], referral_spec, patients(referral_spec, 60, seed=11))
    _spoil(sites[0], ids[5])
    after = run_simulated_federation(referral_spec, sites, rounds=1, encrypt=False, keyholder_home=tmp_path / "kh")
    site_id = sites[0].name
    assert after.train_rows[site_id] == before.train_rows[site_id] + 59
    assert after.sites[site_id]["n"] == before.sites[site_id]["n"]  # the fixed test rows, and only them
    for other in sites[1:]:
        assert after.train_rows[other.name] == before.train_rows[other.name]
    assert not np.allclose(after.flat, before.flat)
    (entry,) = _outcome_audit(sites[0])
    assert (entry["actor"], entry["details"]["accepted"], entry["details"]["quarantined"]) == ("node", 59, 1)
    with SiteStore(sites[0], read_only=True) as store:
        counted = store.summary(referral_spec.name).set_index("source")
        assert counted.loc[OUTCOME_SOURCE, "accepted"] == 59 and counted.loc[OUTCOME_SOURCE, "quarantined"] == 1
        (reason,) = store.quarantine(referral_spec.name).query("source_file == @OUTCOME_SOURCE")["reason"]
        assert "age: 300" in reason
    assert not _outcome_audit(sites[1])  # a site with no decisions: nothing written
