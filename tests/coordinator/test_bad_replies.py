"""A bad site does not sink a run: its reply is left out and named; an inconsistent aggregate is never adopted.

Unit tests drive the screening and the encrypted FedAvg with real TenSEAL ciphertexts and a real key
holder (its own folder, sites enrolled); two real Flower simulations stage a misbehaving site with a
client mod (``client_mods``).
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import tenseal as ts
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)

import node_agent.contexts as node_contexts
from coordinator.aggregator import Aggregator
from coordinator.strategy import (
    EncryptedFedAvg,
    ReplyScreen,
    ScreenedFedAvg,
    check_total,
    ciphertext_of,
)
from federation.crypto import (
    WIDE_SCALE_BITS,
    CKKSParams,
    encrypt_contribution,
    encrypt_vector,
    load_public_context,
    pack,
)
from federation.errors import AggregateCheckError, NotEnoughSitesError, SiteDataError
from federation.keyholder_api import DecryptRequest
from federation.tags import TAG_SLOTS, TRAILER, QueryLabel
from keyholder.errors import ReplayError
from keyholder.key_holder import KeyHolder
from keyholder.state import KeyHolderState
from models.encoding import SiteStatistics
from models.spec import TaskSpec
from simulation.engine import run_simulated_federation, site_dirs_of

N_PARAMS = 17
SITES = ["site_0", "site_1", "site_2", "site_3"]
ROWS = [120.0, 80.0, 200.0, 100.0]
TOTAL = sum(ROWS)
TRAIN = QueryLabel(run_id="bad-replies", phase="train", round=0, task="referral_risk")


@pytest.fixture()
def enrolled(enrolled_key_holder):
    """A fresh key holder (min-sites 3) with SITES enrolled: each test's queries are its own."""
    return enrolled_key_holder(n_sites=len(SITES), min_sites=3)


@pytest.fixture()
def key_holder(enrolled) -> KeyHolder:
    return enrolled[0]


@pytest.fixture()
def site_keys(enrolled) -> dict[str, bytes]:
    return {site: enrolment.site_key_bytes for site, enrolment in enrolled[1].items()}


@pytest.fixture()
def aggregator(key_holder) -> Aggregator:
    return Aggregator(key_holder.public_context)


def _reply(node: int, content: dict | Error, message_type: str = MessageType.TRAIN) -> Message:
    metadata = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="m",
                        group_id="", created_at=0.0, ttl=60.0, message_type=message_type)
    if isinstance(content, Error):
        return Message(error=content, metadata=metadata)
    return Message(content=RecordDict(content), metadata=metadata)


def _ciphertext(blob: bytes) -> ArrayRecord:
    return ArrayRecord({"ciphertext": Array(np.frombuffer(blob, dtype=np.uint8))})


def _site(site: str) -> ConfigRecord:
    return ConfigRecord({"site-id": site})


def _foreign_context() -> ts.Context:
    """The same CKKS parameters under a key of its own (as a coordinator or a site could make)."""
    params = CKKSParams()
    other = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=params.poly_modulus_degree,
                       coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    other.global_scale = 2**params.scale_bits
    return load_public_context(other.serialize(save_secret_key=False, save_galois_keys=False, save_relin_keys=False))


def _train_contents(aggregator: Aggregator, site_keys: dict[str, bytes], rng: np.random.Generator,
                    server_round: int = 1) -> tuple[list[dict], list[np.ndarray]]:
    """Four honest sites' encrypted updates ``Enc([w_i * theta_i, w_i])``, ``w_i = n_i / N``, tagged
    for this round's train query, each in the name of its site."""
    thetas = [rng.normal(0, 1, N_PARAMS) for _ in ROWS]
    label = replace(TRAIN, round=server_round)
    contents = []
    for site, theta, n in zip(SITES, thetas, ROWS):
        w = n / TOTAL
        blob = encrypt_contribution(aggregator.context, np.append(w * theta, w), site_key=site_keys[site], label=label)
        contents.append({"ciphertext": _ciphertext(blob), "metrics": MetricRecord({"num-examples": n, "train-loss": 0.5}),
                         "site": _site(site)})
    return contents, thetas


def _strategy(aggregator, key_holder) -> EncryptedFedAvg:
    return EncryptedFedAvg(aggregator=aggregator, key_holder=key_holder, n_params=N_PARAMS, total_examples=TOTAL,
                           screen=ReplyScreen(min_sites=3, aggregator=aggregator), label=TRAIN, min_train_nodes=3,
                           min_evaluate_nodes=3, min_available_nodes=3)


def _other_params_blob() -> bytes:
    other = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 20, 40])
    other.global_scale = 2**20
    return pack([ts.ckks_vector(other, [0.1] * (N_PARAMS + 1 + TRAILER)).serialize()])


def _corrupt(kind: str, content: dict, aggregator: Aggregator, site_key: bytes) -> dict | Error:
    """The fourth site's reply (round 1), spoilt in one way."""
    blob = ciphertext_of(_reply(4, content))
    w = ROWS[3] / TOTAL
    label = replace(TRAIN, round=1)
    if kind == "random bytes":
        return content | {"ciphertext": _ciphertext(os.urandom(len(blob)))}
    if kind == "truncated":
        return content | {"ciphertext": _ciphertext(blob[: len(blob) // 2])}
    if kind == "wrong length":
        short = encrypt_contribution(aggregator.context, np.full(5, w), site_key=site_key, label=label)
        return content | {"ciphertext": _ciphertext(short)}
    if kind == "other CKKS parameters":
        return content | {"ciphertext": _ciphertext(_other_params_blob())}
    if kind == "wrong scale":
        wide = encrypt_contribution(aggregator.context, np.full(N_PARAMS + 1, w), site_key=site_key, label=label,
                                    scale_bits=25)
        return content | {"ciphertext": _ciphertext(wide)}
    if kind == "no ciphertext":
        return {"metrics": content["metrics"], "site": content["site"]}
    if kind == "no site id":
        return {"ciphertext": content["ciphertext"], "metrics": content["metrics"]}
    if kind == "a second reply for a site":  # in the name of site_0, which has already answered
        return content | {"site": _site("site_0")}
    if kind == "NaN num-examples":
        return content | {"metrics": MetricRecord({"num-examples": float("nan"), "train-loss": 0.5})}
    assert kind == "error reply"
    return Error(code=0, reason="site crashed: out of memory")


BAD_REPLIES = {
    "random bytes": "not a valid ciphertext", "truncated": "not a valid ciphertext",
    "wrong length": f"holds {5 + TRAILER} values, expected {N_PARAMS + 1 + TRAILER}",
    "other CKKS parameters": "not a CKKS ciphertext under the public",
    "wrong scale": "scale 2^25.0, expected 2^40", "no ciphertext": "no ciphertext", "no site id": "no site id",
    "a second reply for a site": "a second reply in the name of site 'site_0'",
    "NaN num-examples": "not a row count", "error reply": "out of memory",
}


@pytest.mark.parametrize("kind", sorted(BAD_REPLIES))
def test_a_malformed_train_reply_is_left_out_and_named(kind, key_holder, aggregator, site_keys):
    contents, thetas = _train_contents(aggregator, site_keys, np.random.default_rng(1))
    contents[3] = _corrupt(kind, contents[3], aggregator, site_keys["site_3"])
    strategy = _strategy(aggregator, key_holder)
    arrays, metrics = strategy.aggregate_train(1, [_reply(node, c) for node, c in enumerate(contents, start=1)])
    expected = np.average(np.stack(thetas[:3]), axis=0, weights=ROWS[:3])
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], expected, atol=1e-4)
    assert metrics is not None
    [excluded] = strategy.screen.excluded
    assert (excluded.round, excluded.phase, excluded.node) == (1, "train", 4)
    assert BAD_REPLIES[kind] in excluded.reason
    # The sites that counted are named by the replies they sent.
    assert strategy.screen.site_of == {1: "site_0", 2: "site_1", 3: "site_2"}


def test_too_few_usable_replies_fail_the_round_naming_the_sites_left_out(key_holder, aggregator, site_keys):
    contents, _ = _train_contents(aggregator, site_keys, np.random.default_rng(2), server_round=3)
    contents[1] = _corrupt("truncated", contents[1], aggregator, site_keys["site_1"])
    contents[3] = _corrupt("error reply", contents[3], aggregator, site_keys["site_3"])
    with pytest.raises(NotEnoughSitesError, match=r"train \(round 3\): 2 usable.*node 2: not a valid.*node 4: error"):
        _strategy(aggregator, key_holder).aggregate_train(3, [_reply(n, c) for n, c in enumerate(contents, start=1)])
    assert not any(e["action"].startswith("decrypt") for e in key_holder.state.ledger.entries())  # never asked


def test_a_site_that_does_not_answer_is_named():
    screen = ReplyScreen(min_sites=2, aggregator=None)
    replies = [_reply(n, {"metrics": MetricRecord({"num-examples": 10})}, MessageType.EVALUATE) for n in (1, 2)]
    assert len(screen.usable(replies, phase="evaluate", server_round=1, expected_nodes={1, 2, 3})) == 2
    assert [(e.node, e.reason) for e in screen.excluded] == [(3, "no reply before the timeout")]


@pytest.mark.parametrize("attempt", range(5))
def test_an_update_encrypted_under_another_key_is_never_adopted(attempt, key_holder, aggregator, site_keys):
    # Same CKKS parameters, another key: nothing tells it apart before decryption. The decrypted sum
    # is garbage; before these checks, about half such sums were released and became the model.
    contents, _ = _train_contents(aggregator, site_keys, np.random.default_rng(10 + attempt))
    w = ROWS[3] / TOTAL
    foreign = encrypt_contribution(_foreign_context(), np.append(np.full(N_PARAMS, w * 0.1), w),
                                   site_key=site_keys["site_3"], label=replace(TRAIN, round=1))
    contents[3]["ciphertext"] = _ciphertext(foreign)
    strategy = _strategy(aggregator, key_holder)
    with pytest.raises(AggregateCheckError):
        strategy.aggregate_train(1, [_reply(n, c) for n, c in enumerate(contents, start=1)])
    assert strategy.screen.excluded == []  # it looked like a valid ciphertext
    assert key_holder.state.ledger.entries()[-1]["action"] == "decrypt-refused"


def test_a_weight_sum_unlike_the_declared_rows_is_not_adopted(key_holder, aggregator, site_keys):
    contents, _ = _train_contents(aggregator, site_keys, np.random.default_rng(3))
    contents[0]["metrics"] = MetricRecord({"num-examples": 10 * ROWS[0], "train-loss": 0.5})
    with pytest.raises(AggregateCheckError, match="weight sum"):
        _strategy(aggregator, key_holder).aggregate_train(1, [_reply(n, c) for n, c in enumerate(contents, start=1)])


def test_statistics_with_a_foreign_key_ciphertext_are_never_released(key_holder, aggregator, site_keys):
    stats = [np.array([300.0, 75_000.0, 6.5e7, 300.0]) * (i + 1) for i in range(4)]

    def ask(run: str, blobs: list[bytes], cohort: list[str]) -> np.ndarray:
        label = QueryLabel(run_id=run, phase="stats", round=0, task="referral_risk")
        request = DecryptRequest.of(label, cohort=cohort, length=4, scale_bits=WIDE_SCALE_BITS)
        return key_holder.decrypt_aggregate(aggregator.add(blobs, length=4, scale_bits=WIDE_SCALE_BITS), request)

    def encrypted(run: str, context: ts.Context, i: int) -> bytes:
        label = QueryLabel(run_id=run, phase="stats", round=0, task="referral_risk")
        return encrypt_contribution(context, stats[i], site_key=site_keys[SITES[i]], label=label,
                                    scale_bits=WIDE_SCALE_BITS)

    foreign = _foreign_context()
    blobs = [encrypted("stats-1", aggregator.context, i) for i in range(3)] + [encrypted("stats-1", foreign, 3)]
    with pytest.raises(AggregateCheckError):
        ask("stats-1", blobs, SITES)
    honest = [encrypted("stats-2", aggregator.context, i) for i in range(3)]
    with pytest.raises(AggregateCheckError, match="does not count the 4 site"):
        ask("stats-2", honest, SITES)  # the aggregator claims a fourth site it did not sum
    with pytest.raises(ReplayError):
        ask("stats-2", honest, SITES[:3])  # and gets no second try at the same query
    honest = [encrypted("stats-3", aggregator.context, i) for i in range(3)]
    np.testing.assert_allclose(ask("stats-3", honest, SITES[:3]), np.sum(stats[:3], axis=0), rtol=1e-6, atol=1e-2)


def test_non_finite_values_are_refused_at_the_site_and_left_out_at_the_coordinator(aggregator, site_keys):
    with pytest.raises(SiteDataError, match="non-finite"):
        encrypt_contribution(aggregator.context, np.array([1.0, np.nan, 2.0]), site_key=site_keys["site_0"],
                             label=TRAIN)
    with pytest.raises(SiteDataError):
        encrypt_contribution(aggregator.context, np.array([np.inf]), site_key=site_keys["site_0"], label=TRAIN)
    # A plaintext run has no encryption step to refuse them: the coordinator leaves the reply out.
    strategy = ScreenedFedAvg(screen=ReplyScreen(min_sites=2, aggregator=None), n_params=3, min_train_nodes=2,
                              min_evaluate_nodes=2, min_available_nodes=2)
    updates = [np.ones(3), 3 * np.ones(3), np.array([1.0, np.nan, 1.0])]
    replies = [_reply(n, {"arrays": ArrayRecord([u]), "metrics": MetricRecord({"num-examples": 10}),
                          "site": _site(site)})
               for n, (u, site) in enumerate(zip(updates, SITES), start=1)]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], 2 * np.ones(3))
    assert [(e.node, e.reason) for e in strategy.screen.excluded] == [(3, "update holds non-finite values")]
    with pytest.raises(AggregateCheckError):
        check_total("a total", float("nan"), 3.0, absolute=0.5)


def test_a_site_folder_without_a_store_is_an_error_not_skipped(tmp_path):
    for name in ("site_a", "site_b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "site.duckdb").touch()
    (tmp_path / "site_c").mkdir()
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".DS_Store").touch()
    with pytest.raises(SiteDataError, match="site_c"):
        site_dirs_of(tmp_path)
    (tmp_path / "site_c").rmdir()
    assert [p.name for p in site_dirs_of(tmp_path)] == ["site_a", "site_b"]


# --- Real Flower simulations: the fourth site (site_d_gbk) misbehaves. Mods run in Ray's workers,
# which import them from this module.

BAD_PARTITION = 3


def _is_bad(context: Context) -> bool:
    return int(context.node_config["partition-id"]) == BAD_PARTITION


def misbehaving_site(message: Message, context: Context, call_next) -> Message:
    """Random bytes for statistics, half a ciphertext for updates, the wrong length for calibration,
    and a crash in the final evaluation."""
    kind = message.metadata.message_type
    if _is_bad(context) and kind == MessageType.EVALUATE and message.content["config"].get("final", False):
        raise RuntimeError("the site's disk is full")
    reply = call_next(message, context)
    if not _is_bad(context) or reply.has_error() or "ciphertext" not in reply.content:
        return reply
    blob = ciphertext_of(reply)
    if kind == "query.stats":
        blob = os.urandom(len(blob))
    elif kind == MessageType.TRAIN:
        blob = blob[: len(blob) // 2]
    else:
        # Calibration messages name the CKKS context by digest; this process just used its verified copy.
        digest = str(message.content["config"]["ckks-context-sha256"])
        context_ = next(c for (_, d), c in node_contexts._LOADED.items() if d == digest)
        blob = encrypt_vector(context_, np.ones(3), tags=np.zeros(TAG_SLOTS), scale_bits=25)
    reply.content["ciphertext"] = _ciphertext(blob)
    return reply


def foreign_key_site(message: Message, context: Context, call_next) -> Message:
    """Well-formed statistics of the right length and scale, encrypted under a key of its own (same
    CKKS parameters). The first phase, so the run that fails is short."""
    reply = call_next(message, context)
    if _is_bad(context) and message.metadata.message_type == "query.stats" and not reply.has_error():
        spec = TaskSpec.model_validate_json(str(message.content["config"]["task-json"]))
        own = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 60])
        own.global_scale = 2**40
        foreign = load_public_context(own.serialize(save_secret_key=False))
        rows = np.full(SiteStatistics.size(spec), float(reply.content["metrics"]["num-examples"]))
        blob = encrypt_vector(foreign, rows, tags=np.zeros(TAG_SLOTS), scale_bits=WIDE_SCALE_BITS)
        reply.content["ciphertext"] = _ciphertext(blob)
    return reply


def test_a_bad_site_is_left_out_and_named_and_the_run_completes(small_federation, referral_spec, tmp_path):
    outcome = run_simulated_federation(referral_spec, small_federation, rounds=2, keyholder_home=tmp_path / "kh",
                                       client_mods=[misbehaving_site])
    good = ["site_a", "site_b", "site_c_no_spo2"]
    assert sorted(outcome.sites) == good  # left out of the per-site table
    assert len(outcome.rounds) == 2 and np.isfinite(outcome.flat).all()
    assert sorted(outcome.train_rows) == good
    assert outcome.encoding.n_rows == pytest.approx(sum(outcome.train_rows.values()), abs=0.01)
    excluded = {(e.phase, e.round): e for e in outcome.excluded}
    assert set(excluded) == {("stats", 0), ("train", 1), ("train", 2), ("calibrate", 2), ("final-evaluate", 2)}
    assert {e.site for e in outcome.excluded} == {"site_d_gbk"}  # named, not only a node number
    assert "not a valid ciphertext" in excluded["stats", 0].reason
    assert "not a valid ciphertext" in excluded["train", 1].reason
    assert "expected" in excluded["calibrate", 2].reason
    assert "disk is full" in excluded["final-evaluate", 2].reason


def test_a_site_encrypting_under_another_key_fails_the_run_and_no_model_is_made(small_federation, referral_spec,
                                                                                   tmp_path):
    finished_rounds: list[int] = []
    with pytest.raises(AggregateCheckError, match="another key"):
        run_simulated_federation(referral_spec, small_federation, rounds=2, keyholder_home=tmp_path / "kh",
                                 client_mods=[foreign_key_site], on_round=lambda r, _: finished_rounds.append(r))
    assert finished_rounds == []  # no round was trained: no model, not even one from garbage statistics
    refused = [e for e in KeyHolderState(tmp_path / "kh").ledger.entries() if e["action"] == "decrypt-refused"]
    assert [e["details"]["query"].split("|")[1] for e in refused] == ["stats"]
