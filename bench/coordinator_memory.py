"""The coordinator's peak memory in one round, by number of sites, for every way of aggregating the
issue compares (``MODES``; what each one runs is in ``MODE_NOTES`` and in the report):

- **plaintext**: Fenji's plaintext round (``ScreenedFedAvg``): float64 updates, every reply held,
  screened, then Flower's ``aggregate_arrayrecords``;
- **held until the round ends**: Fenji as it was before issue 17, CKKS replies all held (Flower's
  ``send_and_receive``), screened, then added;
- **streaming** / **streaming, packed**: Fenji now (``coordinator.streaming``): each reply screened,
  added to a running sum and dropped, with CKKS replies or packed ones (``federation.packing``);
- **NVFlare HE, in time**: NVFlare's ``HEInTimeAccumulateWeightedAggregator`` with its TenSEAL context
  (N = 8192, moduli [60, 40, 40]; ``bench.nvflare_aggregator``);
- **Flower SecAgg+**: Flower 1.41's ``SecAggPlusWorkflow`` server, its sites replayed
  (``bench.secagg_memory``).

Every mode aggregates the same update (``params`` values) from every site. The sites' side (keys,
encryption, SecAgg+'s client stages) runs first, in processes of its own; each (mode, sites) point
then runs in a fresh process that holds only what a coordinator holds (public contexts, the replies
as they arrive) and imports the same modules whatever its mode. Its peak resident set size is its
own: it starts by resetting the high-water mark Linux carries across fork and exec. Left out
everywhere: the key holder's decryption (Fenji) and the sites' (NVFlare), and Flower's SuperLink,
a process of its own that queues replies until the coordinator pulls them.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from bench.common import environment, peak_kb, reset_peak, save_figure, subplots
from bench.errors import BenchUnavailable

__all__ = ["FENJI_MODES", "MODES", "MODE_NOTES", "NVFLARE", "SECAGG", "draw", "plot", "run"]

FENJI_MODES = ("held until the round ends", "streaming", "streaming, packed")
NVFLARE, SECAGG = "NVFlare HE, in time", "Flower SecAgg+"
MODES = ("plaintext", *FENJI_MODES, NVFLARE, SECAGG)
MODE_NOTES = {
    "plaintext": "Fenji's plaintext round (ScreenedFedAvg): float64 updates in Flower Messages, all held as "
                 "send_and_receive returns them, screened (ReplyScreen), averaged by Flower's aggregate_arrayrecords",
    "held until the round ends": "Fenji before issue 17: CKKS replies (N = 8192, [60, 60], tags) all held, screened, "
                                 "then added (Aggregator.add)",
    "streaming": "Fenji now: each CKKS reply screened, added to a running sum and dropped (coordinator.streaming)",
    "streaming, packed": "Fenji now, packed replies (federation.packing): screened, added and dropped one by one",
    NVFLARE: "NVFlare's HE round modelled on its code (bench/nvflare_aggregator.py): HEBuilder's context (CKKS, "
             "N = 8192, [60, 40, 40], symmetric, relinearisation keys), one CKKS vector per tensor each sent with its "
             "context (FOBS), ScatterAndGather handing each result to HEInTimeAccumulateWeightedAggregator.accept "
             "as it arrives and dropping it, aggregate() multiplying each running total by 1 / weight",
    SECAGG: "Flower 1.41's own server code (DefaultWorkflow + SecAggPlusWorkflow, 3 shares, threshold 2, FedAvg) on a "
            "grid that replays the sites' replies (secaggplus_mod, computed beforehand in another process with the "
            "same seed), inflating each as HttpGrid.pull_messages does; send_and_receive returns every reply of a "
            "stage at once, as Flower's grids do. Network and SuperLink left out (bench/secagg_memory.py)",
}
ROWS = 100.0


# ---- the sites' side and the key holder's: processes of their own, not measured ----

def _prepare(folder: Path, params: int) -> None:
    """Keys, and one site's reply in every mode, written under ``folder``."""
    from bench.nvflare_aggregator import encrypt_result, provision
    from federation.crypto import encrypt_vector, load_public_context
    from federation.packing import encrypt_packed, load_packed_context
    from federation.tags import QueryLabel
    from keyholder.packed import ensure_packed, packed_public_context
    from keyholder.state import KeyHolderState

    update = np.random.default_rng(0).normal(0, 0.1, params)
    with tempfile.TemporaryDirectory() as home:
        state = KeyHolderState(Path(home) / "kh")
        state.init()
        ensure_packed(state)
        public, packed_public = state.public_context(), packed_public_context(state)
    ckks = encrypt_vector(load_public_context(public), update, tags=np.zeros(4))
    # A packed reply (the weighted update, its weight) as a site sends it.
    packed = encrypt_packed(load_packed_context(packed_public), 0.01 * update, weight=0.01, bound=8.0,
                            site_key=b"k" * 32, label=QueryLabel(run_id="m", phase="train", round=1, task="m"))
    client, server = provision()
    materials = {"plaintext": {"update": update},
                 "fenji": {"public": public, "packed_public": packed_public, "ckks": ckks, "packed": packed},
                 "nvflare": {"server": server, "result": encrypt_result(client, update)},
                 "nvflare-sites": {"client": client, "update": update}}
    for name, content in materials.items():
        (folder / f"{name}.pkl").write_bytes(pickle.dumps(content))


def _record_secagg(folder: Path, sites: int, params: int) -> dict:
    from bench.secagg_memory import record

    return record(folder / f"secagg-{sites}", sites=sites, params=params)


# ---- the coordinator's side: one fresh process per point ----

def _load(folder: Path, name: str) -> dict:
    return pickle.loads((folder / f"{name}.pkl").read_bytes())


def _reply(node: int, record_name: str, array: np.ndarray):
    """A site's reply as the coordinator receives it: a Flower ``Message`` with its own buffer."""
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
        record_name: ArrayRecord({record_name: Array(array.copy())}),
        "metrics": MetricRecord({"num-examples": ROWS}),
        "site": ConfigRecord({"site-id": f"site_{node:04d}"}),
    })
    return Message(content=content, metadata=metadata)


def _copy(data: bytes) -> bytes:
    return np.frombuffer(data, dtype=np.uint8).tobytes()


def _plaintext(folder: Path, sites: int, params: int) -> Callable[[], dict]:
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from coordinator.strategy import ReplyScreen

    update = _load(folder, "plaintext")["update"]
    screen = ReplyScreen(min_sites=1, aggregator=None)

    def work() -> dict:
        replies = [_reply(node, "arrays", update) for node in range(1, sites + 1)]  # all held
        good = screen.usable(replies, phase="train", server_round=1, length=params)
        (mean,) = aggregate_arrayrecords([m.content for m in good], "num-examples").to_numpy_ndarrays()
        return {"reply_bytes": update.nbytes, "sum_bytes": mean.nbytes,
                "max_abs_error": float(np.max(np.abs(mean - update)))}

    return work


def _fenji(mode: str, folder: Path, sites: int, params: int) -> Callable[[], dict]:
    from coordinator.aggregator import Aggregator
    from coordinator.strategy import ReplyScreen, ciphertext_of

    materials = _load(folder, "fenji")
    packed = mode.endswith("packed")
    blob = materials["packed" if packed else "ckks"]
    aggregator = Aggregator(materials["public"], materials["packed_public"])
    screen = ReplyScreen(min_sites=1, aggregator=aggregator)
    scale = aggregator.scale_bits

    def arriving() -> Iterator:
        for node in range(1, sites + 1):
            yield _reply(node, "ciphertext", np.frombuffer(blob, dtype=np.uint8))

    def work() -> dict:
        if packed:
            running = aggregator.running(length=params + 1, packed=True)
            screen.usable(arriving(), phase="train", server_round=1, length=params + 1, into=running)
            summed = running.serialize()
        elif mode == "streaming":
            running = aggregator.running(length=params, scale_bits=scale)
            screen.usable(arriving(), phase="train", server_round=1, length=params, scale_bits=scale, into=running)
            summed = running.serialize()
        else:
            replies = list(arriving())  # what Flower's send_and_receive returns: every reply at once
            good = screen.usable(replies, phase="train", server_round=1, length=params, scale_bits=scale)
            summed = aggregator.add([ciphertext_of(m) for m in good], length=params, scale_bits=scale)
        return {"reply_bytes": len(blob), "sum_bytes": len(summed)}

    return work


def _nvflare(folder: Path, sites: int, params: int) -> Callable[[], dict]:
    from bench.nvflare_aggregator import InTimeAccumulator

    materials = _load(folder, "nvflare")
    result = materials["result"]
    aggregator = InTimeAccumulator(materials["server"])  # loaded at the start of the run

    def work() -> dict:
        for node in range(1, sites + 1):
            arrived = [(layer, _copy(vec), _copy(ctx)) for layer, vec, ctx in result]  # its own buffers
            aggregator.accept(f"site-{node}", arrived)  # ScatterAndGather drops the result afterwards
            del arrived
        mean = aggregator.aggregate()
        return {"reply_bytes": sum(len(v) + len(c) for _, v, c in result),
                "reply_ciphertext_bytes": sum(len(v) for _, v, _ in result),
                "sum_bytes": sum(len(v) + len(c) for _, v, c in mean), "_mean": mean}

    return work


def _point(mode: str, sites: int, params: int, folder: Path) -> dict:
    """One measurement, in its own process: peak RSS and seconds of the coordinator's work."""
    reset_peak()
    # The same modules in every mode, so that the baselines differ by what each mode holds.
    import flwr.server.workflow
    import flwr.serverapp.strategy.strategy_utils  # noqa: F401

    import bench.nvflare_aggregator
    import bench.secagg_memory  # noqa: F401
    import coordinator.aggregator
    import coordinator.strategy  # noqa: F401

    checks: dict = {}
    if mode == SECAGG:
        from bench.secagg_memory import check, measure

        baseline = peak_kb()
        aggregate, out = measure(folder / f"secagg-{sites}", sites=sites, params=params)
        peak = peak_kb()
        checks = check(folder / f"secagg-{sites}", aggregate)
    else:
        work = (_plaintext(folder, sites, params) if mode == "plaintext"
                else _nvflare(folder, sites, params) if mode == NVFLARE else _fenji(mode, folder, sites, params))
        baseline = peak_kb()
        started = time.perf_counter()
        out = work()
        out["seconds"] = time.perf_counter() - started
        peak = peak_kb()
        if mode == NVFLARE:  # the sites decrypt the mean: it must be the update every site sent
            from bench.nvflare_aggregator import decrypt_mean

            sites_side = _load(folder, "nvflare-sites")
            mean = decrypt_mean(sites_side["client"], out.pop("_mean"))
            checks = {"max_abs_error": float(np.max(np.abs(mean - sites_side["update"])))}
    return {"mode": mode, "sites": sites, "params": params, **out, **checks, "peak_rss_mb": peak / 1024,
               "baseline_rss_mb": baseline / 1024, "added_mb": (peak - baseline) / 1024}


def _spawned(target, *args):
    """``target(*args)`` in a fresh interpreter; what it returns.

    A fresh ``python -m bench.coordinator_memory``, not a multiprocessing child: that one imports the
    caller's ``__main__`` first (the ``fenji`` CLI: torch, MLflow, about 370 MB), which every point
    would then count. Its stdout (TenSEAL's C++ warnings) is dropped; its stderr is the caller's.

    Raises
    ------
    BenchUnavailable
        If the process fails (its traceback is on stderr).
    """
    with tempfile.TemporaryDirectory(prefix="fenji-memory-point-") as tmp:
        call, result = Path(tmp) / "call.pkl", Path(tmp) / "result.pkl"
        call.write_bytes(pickle.dumps((target.__name__, args)))
        process = subprocess.run([sys.executable, "-m", "bench.coordinator_memory", tmp], stdout=subprocess.DEVNULL,
                                 cwd=Path(__file__).resolve().parents[1], check=False)
        if process.returncode or not result.exists():
            shown = tuple(a for a in args if not isinstance(a, Path))
            raise BenchUnavailable(f"{target.__name__}{shown} ended with exit code {process.returncode} "
                                   "(its traceback is above)")
        return pickle.loads(result.read_bytes())


def run(*, sites: Sequence[int] = (10, 100, 300), params: int = 100_000, modes: Sequence[str] = MODES,
        on_point=None) -> dict:
    """Peak memory and time of the coordinator's aggregation for each mode and number of sites."""
    points, secagg_sites = [], {}
    load_before = list(os.getloadavg())  # times on a shared machine are upper bounds; memory is not affected
    with tempfile.TemporaryDirectory(prefix="fenji-coordinator-memory-") as tmp:
        folder = Path(tmp)
        _spawned(_prepare, folder, params)
        for n in sites:
            if SECAGG in modes:
                secagg_sites[n] = _spawned(_record_secagg, folder, n, params)
            for mode in modes:
                point = _spawned(_point, mode, n, params, folder)
                points.append(point)
                if on_point:
                    on_point(point)
    return {"benchmark": "coordinator-memory", "params": params, "environment": environment(), "points": points,
            "load_average": {"before": load_before, "after": list(os.getloadavg())},
            "modes": {m: MODE_NOTES[m] for m in modes}, "secagg_sites_run": secagg_sites,
            "note": "peak RSS of a fresh process that aggregates one round's replies (the process's own: its "
                    "high-water mark reset at start); added_mb = peak minus the peak before the first reply. The "
                    "sites' work, the key holder's decryption and Flower's SuperLink are not included"}


_LABELS = {"plaintext": "plaintext (Fenji: replies held)",
           "held until the round ends": "Fenji CKKS, replies held (before)",
           "streaming": "Fenji CKKS, streaming", "streaming, packed": "Fenji packed, streaming",
           NVFLARE: "NVFlare HE (N = 8192, [60, 40, 40]), in time", SECAGG: "Flower SecAgg+ server"}
_STYLES = {"plaintext": ("D", "-", "tab:gray"), "held until the round ends": ("o", "-", "tab:orange"),
           "streaming": ("s", "-", "tab:green"), "streaming, packed": ("^", "-", "tab:red"),
           NVFLARE: ("x", "--", "tab:purple"), SECAGG: ("+", "--", "black")}


def draw(ax, report: dict, *, fontsize: int = 8) -> None:
    """Peak memory by sites, one line per mode, on ``ax`` (also ``bench.he_overhead``'s memory panel)."""
    for mode in dict.fromkeys(p["mode"] for p in report["points"]):
        points = [p for p in report["points"] if p["mode"] == mode]
        marker, line, colour = _STYLES.get(mode, ("o", "-", None))
        ax.plot([p["sites"] for p in points], [p["peak_rss_mb"] for p in points], marker=marker, ls=line,
                color=colour, label=_LABELS.get(mode, mode))
    ax.set_yscale("log")  # 100 MB to 2 GB: flat and growing lines both readable
    ax.set_xlabel("sites in the round")
    ax.set_ylabel("coordinator peak memory (MB, RSS, log scale)")
    ax.legend(fontsize=fontsize)
    ax.grid(alpha=0.3, which="both")


def plot(report: dict, path: Path) -> None:
    fig, ax = subplots(figsize=(7.2, 4.6))
    draw(ax, report)
    ax.set_title(f"One round, {report['params']:,} parameters")
    save_figure(fig, path)


if __name__ == "__main__":  # one call of _spawned: its arguments and its result are files in argv[1]
    _folder = Path(sys.argv[1])
    _name, _args = pickle.loads((_folder / "call.pkl").read_bytes())
    _result = {"_prepare": _prepare, "_record_secagg": _record_secagg, "_point": _point}[_name](*_args)
    (_folder / "result.pkl").write_bytes(pickle.dumps(_result))
