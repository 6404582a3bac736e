"""The he-overhead benchmark runs the authenticated protocol for real and reports what its checks cost
(no timing assertions: only that every figure is there and came from the real parties)."""

import json

import numpy as np
import pytest
import tenseal as ts

from bench import he_overhead
from federation.crypto import CKKSParams, encrypt_contribution, pack
from federation.tags import QueryLabel

SITE_KEY = b"k" * 32
LABEL = QueryLabel(run_id="r", phase="train", round=1, task="t")


def _decrypts(ledger_path):
    entries = [json.loads(line) for line in ledger_path.read_text().splitlines()]
    return [e for e in entries if e["action"] == "decrypt"], [e for e in entries if "refused" in e["action"]]


def test_every_round_is_decrypted_by_the_key_holder_service_with_its_checks(tmp_path):
    report = he_overhead.run(sizes=(1000, 2000), sites=3, repeats=1, workdir=tmp_path)

    assert report["inputs"]["min_sites"] == 3
    cohort = ["site-000", "site-001", "site-002"]
    # The service (a token's caller) granted one decryption per size, each its own query, same cohort.
    granted, refused = _decrypts(tmp_path / "keyholder" / "ledger.jsonl")
    assert refused == []
    # …and one packed decryption per size (federation.packing), through the same service and rules.
    assert [(e["actor"], e["details"]["query"], e["details"]["cohort"], e["details"]["scheme"]) for e in granted] == [
        (he_overhead.CALLER, "bench-1000-0|train|1", cohort, "ckks"),
        (he_overhead.CALLER, "bench-1000-0-packed|train|1", cohort, "packed"),
        (he_overhead.CALLER, "bench-2000-0|train|1", cohort, "ckks"),
        (he_overhead.CALLER, "bench-2000-0-packed|train|1", cohort, "packed")]
    # The in-process key holder decrypted the same queries in its own ledger.
    granted, refused = _decrypts(tmp_path / "keyholder-in-process" / "ledger.jsonl")
    assert refused == [] and [e["details"]["query"] for e in granted] == ["bench-1000-0|train|1", "bench-2000-0|train|1"]

    for row, length in zip(report["results"], (1010, 1976)):
        assert row["parameters"] + 1 == length  # the weighted update and the weight
        assert row["max_decryption_error"]["max"] < 1e-4
        checks = row["checks"]
        assert set(checks["per_site"]) == {"tags_seconds", "verify_signature_seconds", "inputs_digest_seconds",
                                           "trailer_bytes"}
        assert set(checks["per_round"]) == {"keyholder_checks_seconds", "http_hop_seconds", "decrypt_bare_seconds",
                                            "decrypt_in_process_seconds", "share_of_encrypted_round"}
        assert min(checks["per_site"][k] for k in ("tags_seconds", "verify_signature_seconds", "inputs_digest_seconds")) > 0
        assert checks["per_site"]["trailer_bytes"] == 0  # the tags fit in the last ciphertext's free slots
        per_round = checks["per_round"]
        assert per_round["keyholder_checks_seconds"] == pytest.approx(
            per_round["decrypt_in_process_seconds"] - per_round["decrypt_bare_seconds"])
        # The round's decryption is the HTTP one: the in-process call plus the hop.
        assert row["encrypted"]["decrypt"]["median"] == pytest.approx(
            per_round["decrypt_in_process_seconds"] + per_round["http_hop_seconds"])
        assert row["round_seconds_encrypted"]["median"] == pytest.approx(
            row["train_seconds"]["median"] + sum(row["encrypted"][k]["median"] for k in ("site", "aggregate", "decrypt")))
        assert 0 < per_round["share_of_encrypted_round"] < 1
        # The same round packed, and with NVFlare's CKKS parameters: measured in the same run.
        packed, nvflare = row["variants"]["packed"], row["variants"]["nvflare"]
        assert 0 < packed["max_error"]["max"] <= packed["error_budget"]
        assert nvflare["max_error"]["max"] < 1e-3
        assert packed["bytes_per_site"] < row["bytes_per_site_encrypted"] < nvflare["bytes_per_site"]
        assert packed["round_seconds"]["median"] > row["train_seconds"]["median"]


@pytest.fixture(scope="module")
def context():
    params = CKKSParams()
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=params.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    ctx.global_scale = 2**params.scale_bits
    return ctx


def test_tags_that_fit_in_the_last_ciphertext_cost_no_bytes(context):
    values = np.zeros(4091)  # 4091 values + contributor slot + 4 tags = 4096 slots: one ciphertext
    blob = encrypt_contribution(context, values, site_key=SITE_KEY, label=LABEL)
    assert he_overhead.trailer_bytes(blob, length=values.size, slots=4096) == 0


def test_tags_that_spill_into_another_ciphertext_cost_that_ciphertext(context):
    values = np.zeros(4095)  # with its contributor slot alone it fills one ciphertext; the tags need a second
    blob = encrypt_contribution(context, values, site_key=SITE_KEY, label=LABEL)
    untagged = pack([ts.ckks_vector(context, np.append(values, 1.0).tolist()).serialize()])
    extra = he_overhead.trailer_bytes(blob, length=values.size, slots=4096)
    assert extra > 0 and extra == pytest.approx(len(blob) - len(untagged), rel=0.01)
    with pytest.raises(ValueError):
        he_overhead.trailer_bytes(blob, length=10, slots=4096)
