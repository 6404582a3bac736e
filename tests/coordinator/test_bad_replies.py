"""A bad site does not sink a run: its reply is left out and named; an inconsistent aggregate is never adopted.

Unit tests drive the screening and the encrypted FedAvg with real TenSEAL ciphertexts; two real
Flower simulations stage a misbehaving site with a client mod (``client_mods``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tenseal as ts
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)

from coordinator.aggregator import Aggregator
from coordinator.strategy import (
    EncryptedFedAvg,
    ReplyScreen,
    ScreenedFedAvg,
    check_total,
    ciphertext_of,
)
from federation.crypto import WIDE_SCALE_BITS, encrypt_vector, load_public_context, pack
from federation.errors import AggregateCheckError, NotEnoughSitesError, SiteDataError
from keyholder.key_holder import KeyHolder
from models.encoding import SiteStatistics
from models.spec import TaskSpec
from simulation.engine import run_simulated_federation, site_dirs_of

N_PARAMS = 17
ROWS = [120.0, 80.0, 200.0, 100.0]
TOTAL = sum(ROWS)


@pytest.fixture(scope="module")
def key_holder() -> KeyHolder:
    return KeyHolder(min_sites=3)


@pytest.fixture(scope="module")
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


def _train_contents(aggregator: Aggregator, rng: np.random.Generator) -> tuple[list[dict], list[np.ndarray]]:
    """Four honest sites' encrypted updates ``Enc([w_i * theta_i, w_i])``, ``w_i = n_i / N``."""
    thetas = [rng.normal(0, 1, N_PARAMS) for _ in ROWS]
    contents = []
    for theta, n in zip(thetas, ROWS):
        w = n / TOTAL
        contents.append({"ciphertext": _ciphertext(encrypt_vector(aggregator.context, np.append(w * theta, w))),
                         "metrics": MetricRecord({"num-examples": n, "train-loss": 0.5})})
    return contents, thetas


def _strategy(aggregator, key_holder) -> EncryptedFedAvg:
    return EncryptedFedAvg(aggregator=aggregator, key_holder=key_holder, n_params=N_PARAMS, total_examples=TOTAL,
                           screen=ReplyScreen(min_sites=3, aggregator=aggregator), min_train_nodes=3,
                           min_evaluate_nodes=3, min_available_nodes=3)


def _other_params_blob() -> bytes:
    other = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 20, 40])
    other.global_scale = 2**20
    return pack([ts.ckks_vector(other, [0.1] * (N_PARAMS + 2)).serialize()])


def _corrupt(kind: str, content: dict, aggregator: Aggregator) -> dict | Error:
    blob = ciphertext_of(_reply(4, content))
    w = ROWS[3] / TOTAL
    if kind == "random bytes":
        return content | {"ciphertext": _ciphertext(os.urandom(len(blob)))}
    if kind == "truncated":
        return content | {"ciphertext": _ciphertext(blob[: len(blob) // 2])}
    if kind == "wrong length":
        return content | {"ciphertext": _ciphertext(encrypt_vector(aggregator.context, np.full(5, w)))}
    if kind == "other CKKS parameters":
        return content | {"ciphertext": _ciphertext(_other_params_blob())}
    if kind == "wrong scale":
        wide = encrypt_vector(aggregator.context, np.full(N_PARAMS + 1, w), scale_bits=25)
        return content | {"ciphertext": _ciphertext(wide)}
    if kind == "no ciphertext":
        return {"metrics": content["metrics"]}
    if kind == "NaN num-examples":
        return content | {"metrics": MetricRecord({"num-examples": float("nan"), "train-loss": 0.5})}
    assert kind == "error reply"
    return Error(code=0, reason="site crashed: out of memory")


BAD_REPLIES = {
    "random bytes": "not a valid ciphertext", "truncated": "not a valid ciphertext",
    "wrong length": "holds 6 values, expected 19", "other CKKS parameters": "not a CKKS ciphertext under the public",
    "wrong scale": "scale 2^25.0, expected 2^40", "no ciphertext": "no ciphertext",
    "NaN num-examples": "not a row count", "error reply": "out of memory",
}


@pytest.mark.parametrize("kind", sorted(BAD_REPLIES))
def test_a_malformed_train_reply_is_left_out_and_named(kind, key_holder, aggregator):
    contents, thetas = _train_contents(aggregator, np.random.default_rng(1))
    contents[3] = _corrupt(kind, contents[3], aggregator)
    strategy = _strategy(aggregator, key_holder)
    arrays, metrics = strategy.aggregate_train(1, [_reply(node, c) for node, c in enumerate(contents, start=1)])
    expected = np.average(np.stack(thetas[:3]), axis=0, weights=ROWS[:3])
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], expected, atol=1e-4)
    assert metrics is not None
    [excluded] = strategy.screen.excluded
    assert (excluded.round, excluded.phase, excluded.node) == (1, "train", 4)
    assert BAD_REPLIES[kind] in excluded.reason


def test_too_few_usable_replies_fail_the_round_naming_the_sites_left_out(key_holder, aggregator):
    contents, _ = _train_contents(aggregator, np.random.default_rng(2))
    contents[1] = _corrupt("truncated", contents[1], aggregator)
    contents[3] = _corrupt("error reply", contents[3], aggregator)
    with pytest.raises(NotEnoughSitesError, match=r"train \(round 3\): 2 usable.*node 2: not a valid.*node 4: error"):
        _strategy(aggregator, key_holder).aggregate_train(3, [_reply(n, c) for n, c in enumerate(contents, start=1)])


def test_a_site_that_does_not_answer_is_named(aggregator):
    screen = ReplyScreen(min_sites=2, aggregator=None)
    replies = [_reply(n, {"metrics": MetricRecord({"num-examples": 10})}, MessageType.EVALUATE) for n in (1, 2)]
    assert len(screen.usable(replies, phase="evaluate", server_round=1, expected_nodes={1, 2, 3})) == 2
    assert [(e.node, e.reason) for e in screen.excluded] == [(3, "no reply before the timeout")]


@pytest.mark.parametrize("attempt", range(5))
def test_an_update_encrypted_under_another_key_is_never_adopted(attempt, key_holder, aggregator):
    # Same CKKS parameters, another key: nothing tells it apart before decryption. The decrypted sum
    # is garbage; before these checks, about half such sums were released and became the model.
    contents, _ = _train_contents(aggregator, np.random.default_rng(10 + attempt))
    foreign = load_public_context(KeyHolder(min_sites=3).public_context)
    w = ROWS[3] / TOTAL
    contents[3]["ciphertext"] = _ciphertext(encrypt_vector(foreign, np.append(np.full(N_PARAMS, w * 0.1), w)))
    strategy = _strategy(aggregator, key_holder)
    with pytest.raises(AggregateCheckError):
        strategy.aggregate_train(1, [_reply(n, c) for n, c in enumerate(contents, start=1)])
    assert strategy.screen.excluded == []  # it looked like a valid ciphertext


def test_a_weight_sum_unlike_the_declared_rows_is_not_adopted(key_holder, aggregator):
    contents, _ = _train_contents(aggregator, np.random.default_rng(3))
    contents[0]["metrics"] = MetricRecord({"num-examples": 10 * ROWS[0], "train-loss": 0.5})
    with pytest.raises(AggregateCheckError, match="weight sum"):
        _strategy(aggregator, key_holder).aggregate_train(1, [_reply(n, c) for n, c in enumerate(contents, start=1)])


def test_statistics_with_a_foreign_key_ciphertext_are_never_released(key_holder, aggregator):
    stats = [np.array([300.0, 75_000.0, 6.5e7, 300.0]) * (i + 1) for i in range(4)]
    blobs = [encrypt_vector(aggregator.context, v, scale_bits=25) for v in stats[:3]]
    foreign = load_public_context(KeyHolder(min_sites=3).public_context)
    blobs.append(encrypt_vector(foreign, stats[3], scale_bits=25))
    summed = aggregator.add(blobs, length=4, scale_bits=25)
    with pytest.raises(AggregateCheckError):
        key_holder.decrypt_aggregate(summed, length=4, contributors=4)
    honest = aggregator.add(blobs[:3], length=4, scale_bits=25)
    with pytest.raises(AggregateCheckError, match="counts 3 site"):
        key_holder.decrypt_aggregate(honest, length=4, contributors=4)  # the aggregator miscounted
    np.testing.assert_allclose(key_holder.decrypt_aggregate(honest, length=4, contributors=3),
                               np.sum(stats[:3], axis=0), rtol=1e-6, atol=1e-2)


def test_non_finite_values_are_refused_at_the_site_and_left_out_at_the_coordinator(aggregator):
    with pytest.raises(SiteDataError, match="non-finite"):
        encrypt_vector(aggregator.context, np.array([1.0, np.nan, 2.0]))
    with pytest.raises(SiteDataError):
        encrypt_vector(aggregator.context, np.array([np.inf]))
    # A plaintext run has no encryption step to refuse them: the coordinator leaves the reply out.
    strategy = ScreenedFedAvg(screen=ReplyScreen(min_sites=2, aggregator=None), n_params=3, min_train_nodes=2,
                              min_evaluate_nodes=2, min_available_nodes=2)
    updates = [np.ones(3), 3 * np.ones(3), np.array([1.0, np.nan, 1.0])]
    replies = [_reply(n, {"arrays": ArrayRecord([u]), "metrics": MetricRecord({"num-examples": 10})})
               for n, u in enumerate(updates, start=1)]
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
        context_ = load_public_context(bytes(message.content["config"]["ckks-context"]))
        blob = encrypt_vector(context_, np.ones(3), scale_bits=25)
    reply.content["ciphertext"] = _ciphertext(blob)
    return reply


def foreign_key_site(message: Message, context: Context, call_next) -> Message:
    """Well-formed statistics of the right length and scale, encrypted under a key of its own (same
    CKKS parameters). The first phase, so the run that fails is short."""
    reply = call_next(message, context)
    if _is_bad(context) and message.metadata.message_type == "query.stats" and not reply.has_error():
        spec = TaskSpec.model_validate_json(str(message.content["config"]["task-json"]))
        foreign = load_public_context(KeyHolder(min_sites=1).public_context)
        rows = np.full(SiteStatistics.size(spec), float(reply.content["metrics"]["num-examples"]))
        reply.content["ciphertext"] = _ciphertext(encrypt_vector(foreign, rows, scale_bits=WIDE_SCALE_BITS))
    return reply


def test_a_bad_site_is_left_out_and_named_and_the_run_completes(small_federation, referral_spec):
    outcome = run_simulated_federation(referral_spec, small_federation, rounds=2, min_sites=3,
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


def test_a_site_encrypting_under_another_key_fails_the_run_and_no_model_is_made(small_federation, referral_spec):
    finished_rounds: list[int] = []
    with pytest.raises(AggregateCheckError, match="another key"):
        run_simulated_federation(referral_spec, small_federation, rounds=2, min_sites=3,
                                 client_mods=[foreign_key_site], on_round=lambda r, _: finished_rounds.append(r))
    assert finished_rounds == []  # no round was trained: no model, not even one from garbage statistics
