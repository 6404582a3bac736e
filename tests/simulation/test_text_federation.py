"""A text task trains end to end on a tiny synthetic federation (Flower's simulation engine, real
TenSEAL), and no word of any clinic's texts is in anything a node sent."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from models.encoding import Encoder
from models.spec import FeatureKind, TaskSpec, load_task
from models.text import terms
from node_agent.store import SiteStore, quote_ident
from simulation.engine import run_simulated_federation
from simulation.synth import ClinicProfile, generate_clinic

ROUNDS = 2
CLINICS = [ClinicProfile("text_a", 240, age_mean=45), ClinicProfile("text_b", 200, age_mean=70),
           ClinicProfile("text_c", 180, label_offset=0.4), ClinicProfile("text_d", 160, text_english_rate=0.3)]


def _store(site_dir, spec: TaskSpec, frame) -> None:
    """The task's table in the site's DuckDB with the ingest's columns and types (store.SQL_TYPES), less
    the visit-day column (the store reads a table without it, as one made before visit days were read)
    and with no ingest_log entry.

    Written straight from the generated frame, not through an export and the ingest (which stores and
    length-checks the text kind too: node_agent/ingest.py, tests/node_agent/test_ingest_text.py): this
    test is about training and egress, not about reading exports.
    """
    types = {FeatureKind.NUMERIC: "DOUBLE", FeatureKind.CATEGORICAL: "VARCHAR", FeatureKind.BOOLEAN: "BOOLEAN",
             FeatureKind.TEXT: "VARCHAR"}
    rows = frame.assign(record_id=frame["encounter_id"], _ingest_id=1, _row=np.arange(1, len(frame) + 1))
    rows[spec.label.name] = rows[spec.label.name].astype(str)
    columns = ", ".join(f"CAST({quote_ident(f.name)} AS {types[f.kind]}) AS {quote_ident(f.name)}"
                        for f in spec.features)
    with SiteStore(site_dir) as store:
        store.connection.register("rows_in", rows)
        store.connection.execute(
            f"CREATE TABLE {store.table_name(spec)} AS SELECT record_id, {columns}, "
            f"CAST({quote_ident(spec.label.name)} AS VARCHAR) AS {quote_ident(spec.label.name)}, _ingest_id, _row "
            "FROM rows_in")


@pytest.fixture(scope="module")
def text_federation(tmp_path_factory):
    spec = load_task("referral_risk_text")
    root = tmp_path_factory.mktemp("text-federation")
    rng = np.random.default_rng(11)
    sites, texts = [], []
    for profile in CLINICS:
        frame = generate_clinic(profile, rng, text_seed=11)
        _store(root / "sites" / profile.name, spec, frame)
        sites.append(root / "sites" / profile.name)
        texts += frame["complaint_text"].dropna().tolist()
    egress = root / "egress"
    outcome = run_simulated_federation(spec, sites, rounds=ROUNDS, encrypt=True, keyholder_home=root / "keyholder",
                                       egress_log=egress)
    return spec, outcome, egress, texts


def test_the_text_task_trains_and_uses_the_text(text_federation):
    _, outcome, _, _ = text_federation
    assert len(outcome.rounds) == ROUNDS and sorted(outcome.sites) == [c.name for c in CLINICS]
    assert outcome.n_inputs == 41 + 256 + 1  # the structured columns, the buckets, the text's missing flag
    assert np.mean([m["auroc"] for m in outcome.sites.values()]) > 0.65
    weights = outcome.flat[:-1]  # a logistic model: the weights, then the bias
    assert np.abs(weights[41 : 41 + 256]).sum() > 0.1
    text_columns = sorted(c for c in outcome.encoding.column_means if c.startswith("complaint_text"))
    assert text_columns == sorted([*(f"complaint_text#{b}" for b in range(256)), "complaint_text:missing"])


def test_no_word_of_any_text_left_a_node(text_federation):
    spec, outcome, egress, texts = text_federation
    public = spec.model_dump_json()  # the task's own names ("temperature") are no clinic's data
    words = {t.shown for text in texts for t in terms(text)} | {t.key[2:] for text in texts for t in terms(text)}
    # Long enough that a match inside random ciphertext bytes is practically impossible (>= 6 bytes).
    long_words = sorted(w for w in words if len(w.encode("utf-8")) >= 6 and w not in public)
    assert len(long_words) > 100
    snapshots = [p.read_bytes() for p in egress.glob("*.pkl")]
    assert snapshots
    for blob in snapshots:
        found = [w for w in long_words if w.encode("utf-8") in blob]
        assert found == []
        # Everything but the ciphertexts, as text: not even a short word or one character.
        readable = repr({name: record for name, record in pickle.loads(blob)["records"].items()
                         if record["type"] != "ArrayRecord"})
        assert [w for w in words if len(w) >= 2 and not w.isascii() and w in readable] == []
    # The federated encoding is keyed by the task's layout alone.
    encoding = outcome.encoding.to_dict()
    layout = set(Encoder(spec).columns) | set(spec.feature_names)
    assert {*encoding["means"], *encoding["stds"], *encoding["column_means"]} <= layout
