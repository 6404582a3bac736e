"""Replies as they arrive: the coordinator adds each site's ciphertext to a running sum and drops it.

Flower's ``Grid.send_and_receive`` collects every reply of a round in a list before the strategy sees
one, so the coordinator's memory grows with the number of sites (about 12 MB per site for a
100k-parameter model). ``StreamingGrid`` hands the strategy a generator instead: it pulls what has
arrived, yields it, and pulls again, so the screen (``coordinator.strategy.ReplyScreen``) checks
each reply, ``RunningSum`` adds its ciphertext, and the reply's ciphertext is dropped before the
next one is pulled. Memory stays at one running sum plus one reply, whatever the number of sites.

It also polls sooner than Flower's HTTP grid (every 3 s): replies are pulled at
``POLL_SECONDS``, so a round ends soon after its last reply, not up to 3 s later.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator

import tenseal as ts
from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from federation.crypto import pack
from federation.errors import CiphertextError, PrivacyError

__all__ = ["POLL_SECONDS", "RunningSum", "StreamingGrid", "stream_replies"]

POLL_SECONDS = 0.05


def stream_replies(grid: Grid, messages: Iterable[Message], *, timeout: float | None) -> Iterator[Message]:
    """Push ``messages``, then yield each reply as soon as it has been pulled (until all have
    answered or ``timeout`` seconds have passed; ``None`` waits for all).

    The SuperLink answers itself for a node it finds offline (an error reply, "Node Unavailable",
    from its own node id): such a reply is put down to the node the message was sent to, so that the
    reply screen names that site, not the SuperLink."""
    messages = list(messages)  # Flower's grids read them twice
    ids = list(grid.push_messages(messages))
    sent_to = {i: m.metadata.dst_node_id for i, m in zip(ids, messages) if i is not None and isinstance(m, Message)}
    waiting = {i for i in ids if i is not None}
    deadline = None if timeout is None else time.monotonic() + timeout
    while waiting:
        pulled = list(grid.pull_messages(waiting))
        waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
        for reply in pulled:
            node = sent_to.get(reply.metadata.reply_to_message_id)
            if node is not None and reply.metadata.src_node_id == SUPERLINK_NODE_ID and reply.has_error():
                reply.metadata.__dict__["_src_node_id"] = node  # as Flower sets its own ids (no setter)
        while pulled:
            yield pulled.pop(0)  # handed over one at a time: the caller drops each before the next
        if not waiting or (deadline is not None and time.monotonic() >= deadline):
            return
        time.sleep(POLL_SECONDS)


class StreamingGrid(Grid):
    """A ``Grid`` whose ``send_and_receive`` yields replies as they arrive (``stream_replies``);
    everything else is the wrapped grid's."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return stream_replies(self._grid, messages, timeout=timeout)


class RunningSum:
    """The encrypted sum of the replies added so far; each is checked (``Aggregator.read``) first,
    so a bad reply raises ``CiphertextError`` and leaves the sum as it was.

    Parameters
    ----------
    reader
        ``Aggregator.read``-like: bytes → the reply's ciphertext chunks, checked.
    length, scale_bits
        What every summand must hold (see ``Aggregator.read``).
    """

    def __init__(self, reader, *, length: int | None, scale_bits: int | None) -> None:
        self._read = reader
        self.length = length
        self.scale_bits = scale_bits
        self.count = 0
        self.bytes_added = 0  # what the sites sent, summed
        self._total: list | None = None  # CKKS or BFV vectors

    def add(self, blob: bytes) -> None:
        vectors = self._read(blob, length=self.length, scale_bits=self.scale_bits)
        if self._total is None:
            self._total = vectors
        else:
            if len(vectors) != len(self._total):
                raise CiphertextError("encrypted vectors of different lengths cannot be added")
            try:
                for total, vector in zip(self._total, vectors):
                    if total.size() != vector.size():
                        raise ValueError(f"{vector.size()} values, the sum holds {total.size()}")
                    # ``read`` checked the scale already when one is required; else the summands must agree.
                    if self.scale_bits is None and isinstance(total, ts.CKKSVector) and _scale(total) != _scale(vector):
                        raise ValueError(f"scale 2^{math.log2(_scale(vector)):.1f}, the sum's is "
                                         f"2^{math.log2(_scale(total)):.1f}")
            except ValueError as exc:
                raise CiphertextError(f"encrypted vectors that cannot be added: {exc}") from exc
            for total, vector in zip(self._total, vectors):
                total += vector  # in place: the reply's own ciphertext is garbage from here on
        self.count += 1
        self.bytes_added += len(blob)

    def serialize(self) -> bytes:
        if self._total is None:
            raise PrivacyError("nothing to aggregate")
        return pack([vector.serialize() for vector in self._total])


def _scale(vector: ts.CKKSVector) -> float:
    return vector.ciphertext()[0].scale
