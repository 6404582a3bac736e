"""The server of Flower's SecAgg+ for the coordinator-memory sweep: its real code, its sites replayed.

Three hundred sites on Flower's simulation engine do not fit on a two-core machine, and their
processes would not tell the server's memory anyway. So the round runs twice, on a ``Grid`` of
this module, with Flower 1.41's own server code both times: ``DefaultWorkflow`` with
``SecAggPlusWorkflow`` (``bench.secagg_settings``, as ``bench.secagg`` runs it: 3 shares,
threshold 2, clipping 8, quantisation 2^22, modulus 2^32) over a ``FedAvg`` for one round.

1. **The sites' run** (``record``, in a process of its own): every message the workflow sends is
   serialised and deserialised as Flower's transport does (``deflate`` / ``inflate``), handed to
   that site's ``secaggplus_mod`` (its own ``Context``, so its keys and shares persist between
   stages) in front of a fit that returns the site's update, and the reply's serialised objects
   are written to disk, one file per stage and site.
2. **The server's run** (``measure``, in a fresh process whose peak memory is the point): the same
   workflow with the same seed for Python's ``random`` (the sample of sites and the shuffle that
   picks each site's neighbours), so every message it sends is the one the sites answered. The
   grid reads each reply from disk and inflates it as Flower's ``HttpGrid.pull_messages`` does
   (``inflate_object_from_contents``), and ``send_and_receive`` returns the list of every reply
   of a stage, as Flower's grids do. Pushing a message computes its object id (its serialised
   content), as ``HttpGrid.push_messages`` does; the network hop is left out.

What the server holds is then Flower's: the public keys, the forwarded key shares, all the masked
vectors of the round (int64, 8 bytes a value) until it has added them, the legacy ``FitRes`` per
site, the unmasking masks, and FedAvg's own average of the per-site results. Its aggregate must
equal the sites' run's, value for value, and the plain weighted average within SecAgg+'s
quantisation bound (``check``): the replies unmasked, so they are the round's. (Without dropouts
the aggregate would come out the same under another seed; the seed keeps the server's messages,
and so its memory, those of the round the sites answered.)
"""

from __future__ import annotations

import logging
import pickle
import random
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

# Flower at module level: the process being measured has imported all of it before its baseline.
from flwr.app import Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import (
    Code,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from bench.secagg_settings import (
    CLIPPING_RANGE,
    MODULUS_RANGE,
    NUM_SHARES,
    QUANTIZATION_RANGE,
    RECONSTRUCTION_THRESHOLD,
    quantisation_bound,
)

__all__ = ["SEED", "check", "measure", "record"]

SEED = 17
ROWS = 100  # every site's weight, and SecAgg+'s max_weight: the full quantisation range
_FIRST_NODE = 1000


def _stage(message) -> str:
    return str(message.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])


def _deflated(message) -> tuple[str, dict[str, bytes]]:
    return message.object_id, {oid: obj.deflate() for oid, obj in get_all_nested_objects(message).items()}


def _inflated(object_id: str, contents: dict[str, bytes]):
    message = inflate_object_from_contents(object_id, contents)
    message.metadata.__dict__["_message_id"] = object_id
    return message


class _Grid(Grid):
    """A grid of ``sites`` nodes; subclasses answer the pushed messages."""

    def __init__(self, sites: int, folder: Path) -> None:
        self.nodes = list(range(_FIRST_NODE, _FIRST_NODE + sites))
        self.folder = Path(folder)
        self._run = Run.create_empty(1)
        self._pending: dict[str, tuple[str, int]] = {}

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id  # as HttpGrid does
            self._pending[message.object_id] = (_stage(message), message.metadata.dst_node_id)
            self.deliver(message)
            ids.append(message.object_id)
        return ids

    def deliver(self, message) -> None:
        """The sites' run answers here; the server's run has its answers on disk."""

    def pull_messages(self, message_ids) -> Iterable:
        replies = []
        for message_id in list(message_ids):
            stage, node = self._pending.pop(message_id)
            object_id, contents = pickle.loads((self.folder / f"{stage}-{node}.pkl").read_bytes())
            replies.append(_inflated(object_id, contents))
        return replies

    def send_and_receive(self, messages, *, timeout=None) -> Iterable:
        return list(self.pull_messages(self.push_messages(messages)))  # every reply of the stage at once


def _update(node: int, params: int) -> np.ndarray:
    return np.random.default_rng(node).normal(0, 0.1, params).astype(np.float32)


def _run_workflow(grid, *, sites: int, params: int) -> np.ndarray:
    """One SecAgg+ round of Flower's own server code on ``grid``; the new global model."""
    initial = [np.zeros(params, dtype=np.float32)]
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=sites, min_available_clients=sites,
                      accept_failures=False, initial_parameters=ndarrays_to_parameters(initial))
    context = LegacyContext(context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            config=ServerConfig(num_rounds=1), strategy=strategy)
    workflow = SecAggPlusWorkflow(NUM_SHARES, RECONSTRUCTION_THRESHOLD, max_weight=float(ROWS),
                                  clipping_range=CLIPPING_RANGE, quantization_range=QUANTIZATION_RANGE,
                                  modulus_range=MODULUS_RANGE)
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)
    # Who the server is, as Flower's ServerApp runtime sets it (flwr.server.compat.app).
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, grid.run.run_id, SUPERLINK_NODE_ID
    random.seed(SEED)  # the sites sampled and each one's neighbours: the same in both runs
    try:
        DefaultWorkflow(fit_workflow=workflow)(grid, context)
    finally:
        flwr_logger.setLevel(level)
    record = context.state.array_records[MAIN_PARAMS_RECORD]
    (result,) = parameters_to_ndarrays(compat.arrayrecord_to_parameters(record, keep_input=True))
    return np.asarray(result, dtype=np.float64)


def record(folder: Path, *, sites: int, params: int) -> dict:
    """The sites' run: write every site's reply to every stage under ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    contexts = {node: Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={})
                for node in range(_FIRST_NODE, _FIRST_NODE + sites)}
    reply_bytes: dict[str, int] = {}

    def fit(message, context):  # the site's training: its update, its rows
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([_update(context.node_id, params)]), ROWS, {})
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=message)

    class SitesGrid(_Grid):
        def deliver(self, message) -> None:
            node, stage = message.metadata.dst_node_id, _stage(message)
            received = _inflated(*_deflated(message))  # what the site's SuperNode receives
            reply = secaggplus_mod(received, contexts[node], fit)
            object_id, contents = _deflated(reply)
            (self.folder / f"{stage}-{node}.pkl").write_bytes(pickle.dumps((object_id, contents)))
            reply_bytes[stage] = max(reply_bytes.get(stage, 0), sum(len(c) for c in contents.values()))

    grid = SitesGrid(sites, folder)
    aggregate = _run_workflow(grid, sites=sites, params=params)
    np.save(folder / "aggregate.npy", aggregate)
    exact = np.zeros(params)
    for node in grid.nodes:  # every site has the same weight
        exact += _update(node, params) / sites
    np.save(folder / "exact.npy", exact)
    return {"reply_bytes_per_stage": reply_bytes}


def measure(folder: Path, *, sites: int, params: int) -> tuple[np.ndarray, dict]:
    """The server's run on the replies under ``folder``; call it in the process being measured, and
    read its peak before ``check``. The aggregate, the workflow's seconds and the largest reply
    (a masked vector)."""
    folder = Path(folder)
    grid = _Grid(sites, folder)
    started = time.perf_counter()
    aggregate = _run_workflow(grid, sites=sites, params=params)
    seconds = time.perf_counter() - started
    largest = max(p.stat().st_size for p in folder.glob("collect_masked_vectors-*.pkl"))
    return aggregate, {"seconds": seconds, "reply_bytes": largest, "sum_bytes": aggregate.astype(np.float32).nbytes}


def check(folder: Path, aggregate: np.ndarray) -> dict:
    """How the server's aggregate compares with the sites' run's and with the exact average."""
    folder = Path(folder)
    return {"same_as_sites_run": bool(np.array_equal(aggregate, np.load(folder / "aggregate.npy"))),
            "max_abs_error": float(np.max(np.abs(aggregate - np.load(folder / "exact.npy")))),
            "error_bound": quantisation_bound()}
