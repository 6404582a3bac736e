"""The coordinator's peak memory in one encrypted round, by number of sites: every reply held until
the round ends (Flower's ``send_and_receive``, and Fenji before issue 17) against streaming sums
(``coordinator.streaming``: each reply is screened, added to a running sum and dropped), with CKKS
replies and with packed ones (``federation.packing``).

Each (mode, sites) point runs in a fresh process, so its peak resident set size (``ru_maxrss``) is
its own. The replies are real ones: one site's CKKS ciphertext of a ``params``-long update (made
once, then copied per site, as each reply arrives in its own buffer) wrapped in a Flower ``Message``
as a site sends it; the coordinator's real code screens and adds them (``ReplyScreen.usable``,
``Aggregator``). Only the key holder's decryption is left out: it is the same in both modes.
"""

from __future__ import annotations

import multiprocessing
import resource
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from bench.common import environment, save_figure, subplots

__all__ = ["MODES", "plot", "run"]

MODES = ("held until the round ends", "streaming", "streaming, packed")


def _reply(node: int, blob: bytes):
    from flwr.app import (
        Array,
        ArrayRecord,
        ConfigRecord,
        Message,
        Metadata,
        MetricRecord,
        RecordDict,
    )

    metadata = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id=str(node),
                        group_id="", created_at=0.0, ttl=60.0, message_type="train")
    content = RecordDict({
        "ciphertext": ArrayRecord({"ciphertext": Array(np.frombuffer(blob, dtype=np.uint8).copy())}),
        "metrics": MetricRecord({"num-examples": 100.0}),
        "site": ConfigRecord({"site-id": f"site_{node:04d}"}),
    })
    return Message(content=content, metadata=metadata)


def _reset_peak() -> None:
    """Forget the peak RSS this process inherited: Linux keeps the high-water mark across the fork and
    exec that start a spawned process, so without this a child of a large parent (e.g. after a run on
    Flower's engine in the same command) reports the parent's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_kb() -> float:
    """This process's peak RSS in kB since ``_reset_peak`` (VmHWM), else since it started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _point(mode: str, sites: int, params: int, queue) -> None:
    """One measurement, in its own process: peak RSS and seconds of the coordinator's work."""
    _reset_peak()
    from coordinator.aggregator import Aggregator
    from coordinator.strategy import ReplyScreen, ciphertext_of
    from federation.crypto import encrypt_vector, load_public_context
    from federation.packing import encrypt_packed, load_packed_context
    from federation.tags import QueryLabel
    from keyholder.packed import ensure_packed, packed_public_context
    from keyholder.state import KeyHolderState

    with tempfile.TemporaryDirectory() as home:
        state = KeyHolderState(Path(home) / "kh")
        state.init()
        ensure_packed(state)
        public, packed_public = state.public_context(), packed_public_context(state)
    update = np.random.default_rng(0).normal(0, 0.1, params)
    packed = mode.endswith("packed")
    if packed:  # a packed reply (the weighted update, its weight) as a site sends it
        blob = encrypt_packed(load_packed_context(packed_public), 0.01 * update, weight=0.01, bound=8.0,
                              site_key=b"k" * 32, label=QueryLabel(run_id="m", phase="train", round=1, task="m"))
    else:
        blob = encrypt_vector(load_public_context(public), update, tags=np.zeros(4))
    aggregator = Aggregator(public, packed_public)
    screen = ReplyScreen(min_sites=1, aggregator=aggregator)
    baseline = _peak_kb()
    started = time.perf_counter()

    def arriving() -> Iterator:
        for node in range(1, sites + 1):
            yield _reply(node, blob)

    if packed:
        running = aggregator.running(length=params + 1, packed=True)
        screen.usable(arriving(), phase="train", server_round=1, length=params + 1, into=running)
        summed = running.serialize()
    elif mode == "streaming":
        running = aggregator.running(length=params, scale_bits=aggregator.scale_bits)
        screen.usable(arriving(), phase="train", server_round=1, length=params, scale_bits=aggregator.scale_bits,
                      into=running)
        summed = running.serialize()
    else:
        replies = list(arriving())  # what Flower's send_and_receive returns: every reply at once
        good = screen.usable(replies, phase="train", server_round=1, length=params, scale_bits=aggregator.scale_bits)
        summed = aggregator.add([ciphertext_of(m) for m in good], length=params, scale_bits=aggregator.scale_bits)
    seconds = time.perf_counter() - started
    peak = _peak_kb()
    queue.put({"mode": mode, "sites": sites, "params": params, "reply_bytes": len(blob), "sum_bytes": len(summed),
               "peak_rss_mb": peak / 1024, "baseline_rss_mb": baseline / 1024, "seconds": seconds})


def run(*, sites: Sequence[int] = (10, 100, 300), params: int = 100_000, on_point=None) -> dict:
    """Peak memory and time of the coordinator's aggregation for each mode and number of sites."""
    ctx = multiprocessing.get_context("spawn")
    points = []
    for n in sites:
        for mode in MODES:
            queue = ctx.Queue()
            process = ctx.Process(target=_point, args=(mode, n, params, queue))
            process.start()
            point = queue.get()
            process.join()
            points.append(point)
            if on_point:
                on_point(point)
    return {"benchmark": "coordinator-memory", "params": params, "environment": environment(), "points": points,
            "note": "peak RSS of a fresh process that aggregates one round's replies; decryption not included"}


def plot(report: dict, path: Path) -> None:
    fig, ax = subplots(figsize=(6.4, 4.0))
    for mode, marker in zip(MODES, ("o", "s", "^")):
        points = [p for p in report["points"] if p["mode"] == mode]
        ax.plot([p["sites"] for p in points], [p["peak_rss_mb"] for p in points], marker=marker, label=mode)
    ax.set_xlabel("sites in the round")
    ax.set_ylabel("coordinator peak memory (MB, RSS)")
    ax.set_title(f"One encrypted round, {report['params']:,} parameters")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)
