"""Streaming sums: each reply's ciphertext is added as it arrives and dropped before the next one is
pulled, so the coordinator holds one running sum, not every site's reply (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message

from coordinator.streaming import RunningSum, StreamingGrid, stream_replies
from federation.errors import CiphertextError
from federation.tags import TRAILER
from tests.coordinator.test_bad_replies import (  # noqa: F401  (fixtures)
    N_PARAMS,
    ROWS,
    SITES,
    TOTAL,
    _reply,
    _strategy,
    _train_contents,
    aggregator,
    enrolled,
    key_holder,
    site_keys,
)


def test_each_reply_is_added_and_dropped_before_the_next_is_pulled(aggregator, key_holder, site_keys):
    contents, thetas = _train_contents(aggregator, site_keys, np.random.default_rng(3))
    replies = [_reply(i + 1, c) for i, c in enumerate(contents)]
    held_when_pulled: list[int] = []

    def arriving():
        for reply in replies:
            # How many replies still hold their ciphertext at the moment the next one arrives.
            held_when_pulled.append(sum("ciphertext" in r.content for r in replies))
            yield reply

    strategy = _strategy(aggregator, key_holder)
    strategy._sent["train"] = {1, 2, 3, 4}
    arrays, _ = strategy.aggregate_train(1, arriving())

    # Each arriving reply finds every earlier one already added and dropped.
    assert held_when_pulled == [4, 3, 2, 1]
    assert all("ciphertext" not in r.content for r in replies)
    expected = np.average(np.stack(thetas), axis=0, weights=np.asarray(ROWS) / TOTAL)
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], expected, atol=1e-6)
    assert strategy.aggregation_seconds and strategy.aggregation_seconds[-1] >= 0.0


def test_a_bad_reply_midway_leaves_the_running_sum_as_it_was(aggregator, key_holder, site_keys):
    contents, _ = _train_contents(aggregator, site_keys, np.random.default_rng(4))
    blobs = [c["ciphertext"]["ciphertext"].numpy().tobytes() for c in contents]
    streamed = aggregator.running(length=N_PARAMS + 1, scale_bits=aggregator.scale_bits)
    streamed.add(blobs[0])
    with pytest.raises(CiphertextError):
        streamed.add(blobs[1][: len(blobs[1]) // 2])  # truncated
    with pytest.raises(CiphertextError):
        streamed.add(b"\x00" * 64)
    for blob in blobs[1:]:
        streamed.add(blob)
    assert streamed.count == len(SITES)
    # The running sum is the same ciphertext sum as adding all at once: same decryption.
    at_once = aggregator.add(blobs, length=N_PARAMS + 1, scale_bits=aggregator.scale_bits)
    a = _decrypt(key_holder, streamed.serialize())
    b = _decrypt(key_holder, at_once)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_an_empty_running_sum_is_refused(aggregator):
    with pytest.raises(Exception, match="nothing to aggregate"):
        RunningSum(aggregator.read, length=3, scale_bits=None).serialize()


def _decrypt(key_holder, blob: bytes) -> np.ndarray:
    import tenseal as ts

    from federation.crypto import unpack

    context = key_holder.state.secret_context()
    values = np.concatenate([ts.ckks_vector_from(context, c).decrypt() for c in unpack(blob)])
    return values[: N_PARAMS + 1 + TRAILER]


class _Grid:
    """The two calls ``stream_replies`` makes, with replies that arrive over several pulls."""

    def __init__(self, batches: list[list[str]]) -> None:
        self.batches = batches
        self.pulls = 0

    def push_messages(self, messages):
        return [m for m in messages]

    def pull_messages(self, ids):
        batch = self.batches[self.pulls] if self.pulls < len(self.batches) else []
        self.pulls += 1
        return [_answer(i) for i in batch if i in ids]


def _answer(message_id: str) -> Message:
    reply = _reply(1, {})
    reply.metadata.__dict__["_reply_to_message_id"] = message_id
    return reply


def test_replies_are_yielded_as_they_arrive_and_the_wait_ends_at_the_timeout():
    grid = _Grid([["a"], [], ["b", "c"]])
    stream = stream_replies(grid, ["a", "b", "c", "d"], timeout=0.5)
    first = next(stream)
    assert first.metadata.reply_to_message_id == "a" and grid.pulls == 1  # not after all have answered
    rest = [m.metadata.reply_to_message_id for m in stream]
    assert rest == ["b", "c"]  # "d" never answers: the stream ends at the timeout
    assert grid.pulls >= 3


def test_the_streaming_grid_streams_and_delegates():
    grid = _Grid([["x"]])
    wrapped = StreamingGrid(grid)
    assert wrapped.push_messages(["x"]) == ["x"]
    assert [m.metadata.reply_to_message_id for m in wrapped.send_and_receive(["x"], timeout=1.0)] == ["x"]


def test_a_reply_the_superlink_sends_for_an_offline_node_is_put_down_to_that_node():
    """Flower's SuperLink answers for a node that missed its heartbeats with an error from itself
    (node 1): the screen must name the site that did not answer, not the SuperLink."""
    from flwr.app import Metadata, RecordDict
    from flwr.server.superlink.linkstate.utils import (
        create_message_error_unavailable_res_message,
    )

    from coordinator.strategy import ReplyScreen

    sent = Message(RecordDict(), metadata=Metadata(run_id=1, message_id="m7", src_node_id=1, dst_node_id=7,
                                                   reply_to_message_id="", group_id="1", created_at=0.0, ttl=60.0,
                                                   message_type="train"))

    class Offline:
        def push_messages(self, messages):
            return [m.metadata.message_id for m in messages]

        def pull_messages(self, ids):
            return [create_message_error_unavailable_res_message(sent.metadata, "node_unavail")]

    (reply,) = stream_replies(Offline(), [sent], timeout=1.0)
    assert reply.has_error() and reply.metadata.src_node_id == 7
    screen = ReplyScreen(min_sites=0, aggregator=None)
    screen.site_of[7] = "clinic_d"
    assert screen.usable([reply], phase="train", server_round=1, expected_nodes=[7]) == []
    assert [(e.label, e.reason[:36]) for e in screen.named()] == [("clinic_d", "error reply: Error: Node Unavailable")]
