"""Flower's real simulation engine over real DuckDB site stores, with real TenSEAL and MLflow."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from coordinator.registry import register_outcome
from federation.crypto import unpack
from federation.curves import CURVE_KINDS
from federation.packing import max_error, packing_bound
from node_agent.egress import DECLARED_CONFIG, DECLARED_METRICS, REPORT_KINDS
from node_agent.local import load_site_data
from simulation.engine import run_simulated_federation

ROUNDS = 3


@pytest.fixture(scope="module")
def encrypted_run(small_federation, referral_spec, tmp_path_factory):
    egress = tmp_path_factory.mktemp("egress")
    outcome = run_simulated_federation(referral_spec, small_federation, rounds=ROUNDS, encrypt=True,
                                       keyholder_home=tmp_path_factory.mktemp("keyholder"), egress_log=egress)
    return outcome, egress


@pytest.fixture(scope="module")
def plaintext_run(small_federation, referral_spec):
    return run_simulated_federation(referral_spec, small_federation, rounds=ROUNDS, encrypt=False)


def test_encrypted_federation_equals_plaintext_fedavg(encrypted_run, plaintext_run):
    encrypted, _ = encrypted_run
    assert encrypted.encrypted and not plaintext_run.encrypted
    assert encrypted.flat.shape == plaintext_run.flat.shape
    # Model updates go packed (fixed point, federation.packing): equal within its rounding budget per
    # round, carried through later rounds' training (as tests/coordinator/test_packed_engine.py).
    budget = max_error(packing_bound(plaintext_run.flat), len(encrypted.sites))
    assert np.max(np.abs(encrypted.flat - plaintext_run.flat)) < max(1e-4, 10 * ROUNDS * budget)
    for name in encrypted.encoding.means:
        assert encrypted.encoding.means[name] == pytest.approx(plaintext_run.encoding.means[name], abs=1e-4)


def test_every_site_reports_and_the_model_learns(encrypted_run, small_federation):
    outcome, _ = encrypted_run
    assert sorted(outcome.sites) == sorted(p.name for p in small_federation)
    assert len(outcome.rounds) == ROUNDS
    assert np.mean([m["auroc"] for m in outcome.sites.values()]) > 0.65
    # the site that never records SpO2 still trained and was evaluated
    assert np.isfinite(outcome.sites["site_c_no_spo2"]["auroc"])


def test_egress_holds_only_ciphertexts_and_declared_numbers(encrypted_run, small_federation, referral_spec):
    outcome, egress = encrypted_run
    snapshots = [pickle.loads(p.read_bytes()) for p in egress.glob("*.pkl")]
    # stats query + ROUNDS x (train + evaluate) + calibration query + final evaluate, from each of the 4 sites
    assert len(snapshots) == 4 * (3 + 2 * ROUNDS)
    raw_values = set()
    for site in small_federation:
        frame = load_site_data(site, referral_spec).train_frame
        raw_values |= {float(v) for v in frame["age"].tolist() + frame["heart_rate"].dropna().tolist()}
    n_ciphertexts = 0
    for snap in snapshots:
        for name, record in snap["records"].items():
            if record["type"] == "ArrayRecord":
                assert name == "ciphertext" and list(record["items"]) == ["ciphertext"]
                item = record["items"]["ciphertext"]
                assert item["dtype"] == "uint8"
                n_ciphertexts += 1
            elif record["type"] == "MetricRecord":
                declared = {"report": REPORT_KINDS.keys(), "curves": CURVE_KINDS.keys()}.get(name, DECLARED_METRICS)
                assert set(record["items"]) <= declared
                assert "train-loss" not in record["items"]  # the sites' default policy keeps it in
                assert all(isinstance(v, (int, float)) for v in record["items"].values())
            else:
                assert record["type"] == "ConfigRecord" and set(record["items"]) <= DECLARED_CONFIG[name]
    assert n_ciphertexts == 4 * (2 + ROUNDS)  # stats, each round's update, calibration
    # a ciphertext is not a column of records: it does not contain the plain float64 values
    sample = next(s for s in snapshots if "ciphertext" in s["records"])
    blob = np.load(__import__("io").BytesIO(sample["records"]["ciphertext"]["items"]["ciphertext"]["data"]))
    chunks = unpack(blob.tobytes())
    assert len(chunks) >= 1 and all(len(c) > 10_000 for c in chunks)
    # A BFV ciphertext's header holds its scale, 1.0, as a float64: that is not a record's value.
    for value in [v for v in raw_values if v != 1.0][:50]:
        assert np.float64(value).tobytes() not in blob.tobytes()


def test_run_is_registered_in_mlflow_and_audited(encrypted_run, tmp_path):
    import mlflow

    outcome, _ = encrypted_run
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registered = register_outcome(outcome, tracking_uri=uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    version = client.get_model_version(registered.name, registered.version)
    assert version.tags["task"] == "referral_risk" and version.tags["encrypted"] == "True"
    run = client.get_run(registered.run_id)
    assert run.data.metrics["site.site_a.auroc"] == pytest.approx(outcome.sites["site_a"]["auroc"])
    history = client.get_metric_history(registered.run_id, "auroc")
    assert [m.step for m in history] == list(range(1, ROUNDS + 1))
    artifacts = {a.path for a in client.list_artifacts(registered.run_id)}
    assert {"task.yaml", "encoding.json", "site_metrics.json"} <= artifacts
    loaded = mlflow.pytorch.load_model(f"models:/{registered.name}/{registered.version}")
    got = np.concatenate([p.detach().numpy().ravel() for p in loaded.parameters()])
    np.testing.assert_allclose(got, outcome.flat, atol=1e-6)


def test_fewer_sites_than_min_sites_never_decrypts(small_federation, referral_spec, tmp_path):
    from federation.errors import NotEnoughSitesError

    with pytest.raises((NotEnoughSitesError, RuntimeError)) as info:
        run_simulated_federation(referral_spec, small_federation[:2], rounds=1, encrypt=True,
                                 keyholder_home=tmp_path / "keyholder")
    assert "site" in str(info.value)
    ledger = (tmp_path / "keyholder" / "ledger.jsonl").read_text()
    assert '"action": "decrypt"' not in ledger


def test_each_site_reports_its_node_audit_head(encrypted_run, small_federation):
    """Every reply carries the head of the node's hash-chained audit log; the run keeps the last one,
    so a later rewrite of a node's log (or a coordinator claiming another head) is detectable."""
    from node_agent.budget import node_audit

    outcome, _ = encrypted_run
    assert sorted(outcome.site_audit_heads) == sorted(site.name for site in small_federation)
    for site in small_federation:
        log = node_audit(site)
        assert log.verify() >= 1
        by_hash = {e["hash"]: e for e in log.entries()}
        # The head a site sent is an entry of its own chain: the job it accepted for this run.
        entry = by_hash[outcome.site_audit_heads[site.name]]
        assert entry["action"] == "job-accepted" and entry["details"]["task"] == "referral_risk"
