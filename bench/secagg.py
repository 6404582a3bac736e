"""The SecAgg+ anchor: Flower's own secure aggregation, run for real on Flower's simulation engine.

For each model size the same sites train the same MLP (``bench.he_overhead``'s shapes and local
training: 40 random inputs, ``rows`` rows, ``epochs`` epochs) and the coordinator aggregates their
updates twice per round: with ``SecAggPlusWorkflow`` (the sites behind ``secaggplus_mod``: setup,
key sharing, masked vectors, unmasking) and with Flower's plain FedAvg fit workflow, its baseline.
Both run in one simulation, on the same engine and the same Ray actors (kept on loopback as
``simulation.engine`` keeps them), so the ratios compare the protocols and nothing else.

What is measured
----------------
- **Bytes a site sends per round**: every reply the site's ClientApp returns in the round (SecAgg+:
  four, one per stage), each sized as Flower's deployment runtime pushes it to the SuperLink: the
  serialised objects of the Message (``get_all_nested_objects(reply)``, each ``deflate()``-d), that
  is metadata, ConfigRecords (public keys, encrypted key shares, masked vectors, unmask shares) and
  ArrayRecords. A client mod outside ``secaggplus_mod`` sizes them; sizing costs both modes alike.
- **Round wall time**: the coordinator's fit workflow from its first message to the aggregate,
  median over the rounds. Every round starts from the same global model in both modes, so the
  two aggregates of a round can be compared value by value.
- **The aggregate itself**: SecAgg+ quantises each weighted update (stochastic rounding to
  ``QUANTIZATION_RANGE`` steps over ``[-CLIPPING_RANGE, CLIPPING_RANGE]``); the report gives the
  largest difference from the plain FedAvg aggregate and the bound it must stay under.

One plain and one SecAgg+ round at the first size warm the actors up (imports, first messages)
and are not reported. With ``client_resources`` of one CPU on a machine of ``num_cpus``, sites run
in waves of that many: the same for both modes.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.common import environment, quiet_flwr, spread
from bench.errors import BenchUnavailable
from bench.he_overhead import MODELS, _mlp, _train_seconds
from bench.secagg_settings import (
    CLIPPING_RANGE,
    MODULUS_RANGE,
    NUM_SHARES,
    QUANTIZATION_RANGE,
    RECONSTRUCTION_THRESHOLD,
    quantisation_bound,
)
from federation.settings import configure_environment
from simulation.engine import _RAY_INIT_ARGS, _ray_environment

if TYPE_CHECKING:
    from flwr.app import Context, Message
    from flwr.clientapp.typing import ClientAppCallable

__all__ = ["STAGES", "ReplySizes", "collect_replies", "flat_values", "one_round", "quantisation_bound", "run_secagg",
           "secagg_when_asked"]

N_INPUTS = 40
STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")
PLAIN_STAGE = "fit"


# ---- the site's side (runs in Ray's actors: module-level, so it pickles by reference) ----

def _site_update(arrays: list[np.ndarray], config: dict, site: int) -> list[np.ndarray]:
    """The site's local training from the global model ``arrays``, on its own seeded rows."""
    import torch

    # One thread per site, as bench.he_overhead trains; it also makes the update reproducible.
    torch.set_num_threads(1)
    model = _mlp(N_INPUTS, json.loads(str(config["hidden"])))
    with torch.no_grad():
        for param, array in zip(model.parameters(), arrays, strict=True):
            param.copy_(torch.from_numpy(np.asarray(array, dtype=np.float32)))
    # The same rows and batch order in both modes: the two aggregates differ by SecAgg+ alone.
    torch.manual_seed(int(config["seed"]) * 10_000 + site)
    _train_seconds(model, int(config["rows"]), int(config["epochs"]))
    return [p.detach().numpy().copy() for p in model.parameters()]


def _client_fn(context: Context):
    from flwr.client import NumPyClient

    site = int(context.node_config["partition-id"])

    class Site(NumPyClient):
        def fit(self, parameters, config):
            return _site_update(parameters, config, site), int(config["rows"]), {}

    return Site().to_client()


def secagg_when_asked(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """SecAgg+ messages through Flower's ``secaggplus_mod``; the plain round's straight to the site."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


class ReplySizes:
    """Client mod: writes, per reply, the site, the stage, the bytes the reply pushes and the
    seconds the site spent on it, one JSON file each under ``folder`` (the actors are other
    processes; the coordinator reads the folder after each round)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        from flwr.common.secure_aggregation.secaggplus_constants import (
            RECORD_KEY_CONFIGS,
            Key,
        )
        from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

        # Read before secaggplus_mod, which pops the stage from the message.
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        stage = str(configs[Key.STAGE]) if configs is not None else PLAIN_STAGE
        t0 = time.perf_counter()
        reply = call_next(msg, ctxt)
        seconds = time.perf_counter() - t0
        # What the SuperNode pushes: every object of the reply, deduplicated by id as it is.
        sent = sum(len(obj.deflate()) for obj in get_all_nested_objects(reply).values())
        record = {"site": int(ctxt.node_config["partition-id"]), "stage": stage, "bytes": sent, "seconds": seconds,
                  "error": reply.has_error()}
        (self.folder / f"{uuid.uuid4().hex}.json").write_text(json.dumps(record))
        return reply


def _client_app(folder: Path):
    from flwr.clientapp import ClientApp

    return ClientApp(client_fn=_client_fn, mods=[ReplySizes(folder), secagg_when_asked])


# ---- the coordinator's side (a thread of this process) ----

def one_round(grid, context, *, initial: list[np.ndarray], config: dict, sites: int, secagg: bool,
              max_weight: float) -> tuple[float, list[np.ndarray]]:
    """One fit round from ``initial`` with Flower's own workflow; its seconds and the aggregate."""
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
    from flwr.server.workflow.default_workflows import default_fit_workflow

    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=sites, min_available_clients=sites,
                      accept_failures=False, initial_parameters=ndarrays_to_parameters(initial),
                      on_fit_config_fn=lambda _round: dict(config))
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=1), strategy=strategy)
    fit = (SecAggPlusWorkflow(NUM_SHARES, RECONSTRUCTION_THRESHOLD, max_weight=max_weight,
                              clipping_range=CLIPPING_RANGE, quantization_range=QUANTIZATION_RANGE,
                              modulus_range=MODULUS_RANGE)
           if secagg else default_fit_workflow)
    seconds: list[float] = []

    def timed_fit(grid, ctx) -> None:
        t0 = time.perf_counter()
        fit(grid, ctx)
        seconds.append(time.perf_counter() - t0)

    DefaultWorkflow(fit_workflow=timed_fit)(grid, legacy)
    record = context.state.array_records[MAIN_PARAMS_RECORD]
    return seconds[0], parameters_to_ndarrays(compat.arrayrecord_to_parameters(record, keep_input=True))


def collect_replies(folder: Path, *, sites: int, stages: Sequence[str], what: str) -> list[dict]:
    """The replies recorded since the last call (and clears them); every site must have sent one
    reply per stage, or the round did not aggregate what it claims to."""
    records = []
    for path in sorted(folder.glob("*.json")):
        records.append(json.loads(path.read_text()))
        path.unlink()
    got = sorted((r["site"], r["stage"]) for r in records if not r["error"])
    wanted = sorted((site, stage) for site in range(sites) for stage in stages)
    if got != wanted:
        raise BenchUnavailable(f"{what}: the sites' replies were {got}, expected {wanted}; the round did not "
                               "complete (rerun with Flower's log on)")
    return records


def flat_values(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def _measure_size(grid, context, *, size: int, sites: int, rounds: int, rows: int, epochs: int, folder: Path,
                  progress: Callable[[], object] | None) -> dict:
    import torch

    hidden = MODELS.get(size) or [max(size // 42, 1)]  # as bench.he_overhead sizes its models
    torch.manual_seed(size)
    initial = [p.detach().numpy().copy() for p in _mlp(N_INPUTS, hidden).parameters()]
    n_params = sum(a.size for a in initial)
    config = {"hidden": json.dumps(hidden), "seed": size, "rows": rows, "epochs": epochs}
    # Each site's weight (its rows) is max_weight: SecAgg+ keeps its full quantisation range.
    kwargs = {"initial": initial, "config": config, "sites": sites, "max_weight": float(rows)}
    plain_s, secagg_s, differences = [], [], []
    plain_bytes, secagg_bytes, plain_site_s = [], [], []
    stage_bytes: dict[str, list[int]] = {s: [] for s in STAGES}
    stage_site_s: dict[str, list[float]] = {s: [] for s in STAGES}
    for round_ in range(1, rounds + 1):
        seconds, plain = one_round(grid, context, secagg=False, **kwargs)
        records = collect_replies(folder, sites=sites, stages=[PLAIN_STAGE], what=f"plain round {round_} at {size}")
        plain_s.append(seconds)
        plain_bytes += [r["bytes"] for r in records]
        plain_site_s += [r["seconds"] for r in records]

        seconds, secure = one_round(grid, context, secagg=True, **kwargs)
        records = collect_replies(folder, sites=sites, stages=STAGES, what=f"SecAgg+ round {round_} at {size}")
        secagg_s.append(seconds)
        per_site = [0] * sites
        for r in records:
            per_site[r["site"]] += r["bytes"]
            stage_bytes[r["stage"]].append(r["bytes"])
            stage_site_s[r["stage"]].append(r["seconds"])
        secagg_bytes += per_site
        if np.array_equal(flat_values(secure), flat_values(initial)):
            raise BenchUnavailable(f"SecAgg+ round {round_} at {size} left the global model as it was")
        differences.append(float(np.max(np.abs(flat_values(secure) - flat_values(plain)))))
        if progress:
            progress()
    median = statistics.median
    float32_bytes = 4 * n_params
    return {
        "parameters": n_params, "hidden": hidden,
        "bytes_per_site_plaintext_float32": float32_bytes,
        "bytes_per_site_plain_round": spread(plain_bytes),
        "bytes_per_site_secagg": spread(secagg_bytes),
        "bytes_per_stage_secagg": {s: median(v) for s, v in stage_bytes.items()},
        "bytes_ratio": median(secagg_bytes) / float32_bytes,
        "bytes_ratio_to_plain_round": median(secagg_bytes) / median(plain_bytes),
        "round_seconds_plain": spread(plain_s),
        "round_seconds_secagg": spread(secagg_s),
        "round_time_ratio": median(secagg_s) / median(plain_s),
        "site_seconds_plain": median(plain_site_s),
        "site_seconds_secagg_per_stage": {s: median(v) for s, v in stage_site_s.items()},
        "max_abs_difference_from_plain": differences,
        "quantisation_bound": quantisation_bound(),
    }


def _warm_up(grid, context, *, size: int, sites: int, folder: Path) -> None:
    """One plain and one SecAgg+ round, not reported: the actors' first messages pay their imports."""
    hidden = MODELS.get(size) or [max(size // 42, 1)]
    initial = [p.detach().numpy().copy() for p in _mlp(N_INPUTS, hidden).parameters()]
    config = {"hidden": json.dumps(hidden), "seed": 0, "rows": 64, "epochs": 1}
    for secagg in (False, True):
        one_round(grid, context, initial=initial, config=config, sites=sites, secagg=secagg, max_weight=64.0)
        collect_replies(folder, sites=sites, stages=STAGES if secagg else [PLAIN_STAGE], what="warm-up round")


def run_secagg(*, sizes: Sequence[int] = (1_000, 100_000), sites: int = 10, rounds: int = 2, rows: int = 400,
               epochs: int = 1, progress: Callable[[], object] | None = None, verbose: bool = False) -> dict:
    """Measure SecAgg+ against plain FedAvg on Flower's simulation engine, ``rounds`` rounds per size.

    ``progress`` is called once per size and round (after both modes). ``verbose`` keeps Flower's log.

    Raises
    ------
    BenchUnavailable
        If fewer than 3 sites (SecAgg+ needs NUM_SHARES of them), or a round did not complete.
    """
    if sites < NUM_SHARES:
        raise BenchUnavailable(f"SecAgg+ as configured here needs at least {NUM_SHARES} sites, got {sites}")
    configure_environment()
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    load_before = list(os.getloadavg())
    results: list[dict] = []
    server_app = ServerApp()
    with quiet_flwr(not verbose):
        with tempfile.TemporaryDirectory(prefix="fenji-secagg-") as tmp:
            folder = Path(tmp)

            @server_app.main()
            def main(grid, context) -> None:
                _warm_up(grid, context, size=sizes[0], sites=sites, folder=folder)
                for size in sizes:
                    results.append(_measure_size(grid, context, size=size, sites=sites, rounds=rounds, rows=rows,
                                                 epochs=epochs, folder=folder, progress=progress))

            with _ray_environment():
                run_simulation(server_app=server_app, client_app=_client_app(folder), num_supernodes=sites,
                               backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                               "init_args": dict(_RAY_INIT_ARGS)},
                               verbose_logging=verbose)
    if len(results) != len(sizes):
        raise BenchUnavailable("the SecAgg+ simulation ended before every size was measured; rerun with verbose=True")
    return {
        "benchmark": "secagg",
        "inputs": {
            "sizes": list(sizes), "sites": sites, "rounds": rounds, "rows_per_site": rows, "local_epochs": epochs,
            "secaggplus": {"num_shares": NUM_SHARES, "reconstruction_threshold": RECONSTRUCTION_THRESHOLD,
                           "clipping_range": CLIPPING_RANGE, "quantization_range": QUANTIZATION_RANGE,
                           "modulus_range": MODULUS_RANGE, "max_weight": float(rows)},
            "engine": {"name": "Flower simulation (Ray on loopback)", "num_cpus": _RAY_INIT_ARGS["num_cpus"],
                       "cpus_per_site": 1},
            "bytes": "serialised objects of every reply Message a site returns in the round, as the "
                     "deployment runtime pushes them",
            "round_seconds": "the coordinator's fit workflow, first message to aggregate",
        },
        "environment": environment(),
        "results": results,
        "load_average": {"before": load_before, "after": list(os.getloadavg())},
    }
