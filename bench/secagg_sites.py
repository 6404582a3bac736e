"""Flower's SecAgg+ on the site-count benchmarks' clinics: ``python -m bench.secagg_sites <sites> <rounds> <rows>``.

The ``secagg`` mode of ``bench.scale`` (issue 17): the same clinics and task as its other modes
(``bench.clinics``: referral risk, a ~100k-parameter MLP), aggregated by Flower's own
``SecAggPlusWorkflow`` (the sites behind ``secaggplus_mod``, ``bench.secagg_settings``) on Flower's
simulation engine (``run_simulation``, one SuperNode per clinic, Ray kept on loopback as
``simulation.engine`` keeps it). One JSON line out, the contract of ``bench.scale``'s points (``CONTRACT``)
plus the SecAgg+ settings.

What each site does is what Fenji's node agent does in a plaintext round (``node_agent.client_app``'s
``train``): it loads its site store's training split (``node_agent.local.load_site_data``), encodes it with
the run's encoding and trains the global model with the task's own local training
(``node_agent.local.train_update``: ``models.training.train`` with ``TrainConfig.from_spec``, i.e. the spec's
local epochs, learning rate and batch, seed 0, no DP as in a site without a DP policy). Its weight is its
training rows, as FedAvg's. The encoding's standardisation needs the federation's statistics, which a Fenji
run sums (encrypted) in a phase of its own before training: here they are summed once from the clinics while
preparing (``node_agent.local.site_statistics``), outside the measurement, and sent with each round's fit
config as the coordinator sends them (``"encoding"``). So the rounds measured are SecAgg+ training rounds
only, without Fenji's statistics phase.

Which process holds what (flwr 1.41): this process (the "coordinator") runs the ServerApp and the SecAgg+
server workflow in a thread (each stage's replies held until the stage is done: public keys, encrypted key
shares, every site's masked int vector, then the unmask shares) plus Flower's in-memory link state and the
simulation engine's Ray driver. The ClientApps (training, masking) run in Ray's actor processes
(``ClientAppActor``, two on this 2-CPU machine), which is checked: every reply record carries the pid of the
process that sized it, never this one's. Ray's GCS and raylet are processes of their own. So
``coordinator_peak_mb`` is this process's VmHWM after the run, from ``bench.common.reset_peak`` just after
the clinics were prepared; ``coordinator_baseline_mb`` is its VmRSS then (interpreter, Flower, Ray's client,
PyTorch, DuckDB).

Bytes per site are sized as ``bench.secagg`` sizes them (``bench.secagg.ReplySizes``): every reply of the
four SecAgg+ stages, as the deployment runtime would push it. ``round_seconds`` is the fit workflow, first
message to aggregate (``bench.secagg.one_round``), over rounds 2.. (round 1's actors pay their imports).
Each round is followed by Flower's plain FedAvg fit round from the same model, on the same engine and actors
(``round_seconds_plain``, ``round_time_ratio_plain``): SecAgg+'s cost is that ratio. Fenji's rounds in
``bench.scale`` also run federated evaluation, so their seconds are not comparable with these;
``total_seconds`` is ``run_simulation`` whole (Ray's start and shutdown, every round), not the preparing.
``mean_auroc`` is the final global model on each clinic's held-out split (``node_agent.local.evaluate_flat``,
uncalibrated: a Fenji run's federated calibration step is not run), averaged over clinics, computed after
the peak is read.

``check=True`` (the tests) also has each site keep its update, so the coordinator can compare each round's
SecAgg+ aggregate with the plain weighted average of the same updates (``aggregate_check``); the measured runs
leave it off, so no site writes its update to disk and the coordinator reads none.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.clinics import clinical_spec, prepare_sites
from bench.common import current_rss_mb, peak_kb, quiet_flwr, reset_peak, spread
from bench.errors import BenchUnavailable
from bench.secagg import PLAIN_STAGE, STAGES, ReplySizes, collect_replies, flat_values, one_round, secagg_when_asked
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

__all__ = ["CONTRACT", "main", "run_secagg_sites"]

CONTRACT = ("mode", "sites", "rounds", "rows_per_site", "parameters", "total_seconds", "round_seconds",
            "aggregate_seconds", "update_bytes_per_site", "float32_bytes", "bytes_ratio_float32",
            "coordinator_baseline_mb", "coordinator_peak_mb", "mean_auroc")
SEED = 0  # the model's initialisation and the sites' batch order, as a Fenji run's default seed


# ---- the site's side (runs in Ray's actors: module-level, so it pickles by reference) ----

def _client_fn(site_dirs: Sequence[Path], spec, folder: Path, context):
    """Clinic ``partition-id``'s ClientApp: the node agent's plaintext local training on its own store."""
    from flwr.client import NumPyClient

    from models.encoding import EncodingParams
    from models.training import TrainConfig
    from node_agent.local import load_site_data, train_update

    site = int(context.node_config["partition-id"])

    class Clinic(NumPyClient):
        def fit(self, parameters, config):
            data = load_site_data(site_dirs[site], spec)
            params = EncodingParams.from_dict(json.loads(str(config["encoding"])))
            flat, n, _loss = train_update(data, params, parameters[0],
                                          TrainConfig.from_spec(spec, seed=int(config["seed"])))
            if config.get("keep-update", False):
                np.save(folder / f"update-{site}.npy", flat)
            return [flat], n, {}

    return Clinic().to_client()


class _SizesWithPid(ReplySizes):
    """``bench.secagg.ReplySizes``, each record also naming the process the ClientApp ran in."""

    def __call__(self, msg, ctxt, call_next):
        reply = super().__call__(msg, ctxt, call_next)
        (self.folder / f"pid-{os.getpid()}").touch()
        return reply


def _client_app(folder: Path, site_dirs: Sequence[Path], spec):
    from flwr.clientapp import ClientApp

    return ClientApp(client_fn=functools.partial(_client_fn, list(site_dirs), spec, folder),
                     mods=[_SizesWithPid(folder), secagg_when_asked])


# ---- the coordinator's side ----

def _prepare(root: Path, sites: int, rows: int, spec) -> tuple[list[Path], dict, np.ndarray, list[int]]:
    """The clinics, the run's encoding (summed statistics, as Fenji's statistics phase decrypts them), the
    initial global model and each clinic's training rows (its FedAvg weight)."""
    from models.encoding import Encoder, SiteStatistics
    from models.nets import build_model, get_flat
    from node_agent.local import load_site_data, site_statistics

    site_dirs = prepare_sites(root, sites, rows, spec=spec)
    total = np.zeros(SiteStatistics.size(spec))
    train_rows = []
    for site_dir in site_dirs:
        data = load_site_data(site_dir, spec)
        total += site_statistics(data).vector
        train_rows.append(len(data.train_frame))
    encoding = SiteStatistics(spec, total).encoding_params()
    initial = get_flat(build_model(spec, Encoder(spec, encoding).width, seed=SEED))
    return site_dirs, encoding.to_dict(), initial, train_rows


def _plain_average(folder: Path, train_rows: Sequence[int]) -> np.ndarray:
    """FedAvg of the updates the sites kept this round (and clears them), weighted by their rows."""
    total = np.zeros(0)
    for site, n in enumerate(train_rows):
        path = folder / f"update-{site}.npy"
        update = np.load(path)
        path.unlink()
        total = n * update if total.size == 0 else total + n * update
    return total / sum(train_rows)


def _pids(folder: Path) -> set[int]:
    pids = {int(p.name.removeprefix("pid-")) for p in folder.glob("pid-*")}
    if os.getpid() in pids or not pids:
        raise BenchUnavailable(f"the ClientApps ran in processes {sorted(pids)}, this one is {os.getpid()}: "
                               "the coordinator's memory would include the sites'")
    return pids


def run_secagg_sites(sites: int, rounds: int, rows: int, *, check: bool = False, verbose: bool = False) -> dict:
    """``rounds`` rounds of SecAgg+ FedAvg over ``sites`` clinics of ``rows`` encounters; the contract's record.

    Raises
    ------
    BenchUnavailable
        If fewer sites than SecAgg+ shares, a round did not complete, or the sites ran in this process.
    """
    if sites < NUM_SHARES:
        raise BenchUnavailable(f"SecAgg+ as configured here needs at least {NUM_SHARES} sites, got {sites}")
    if rounds < 1:
        raise BenchUnavailable(f"at least one round, got {rounds}")
    configure_environment()
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from models.encoding import EncodingParams
    from node_agent.local import evaluate_flat, load_site_data

    spec = clinical_spec()
    max_weight = float(rows)  # no clinic trains on more than its rows: each weight ratio is at most 1
    round_s: list[float] = []
    plain_s: list[float] = []
    site_bytes: list[int] = []
    differences: list[float] = []
    final: list[np.ndarray] = []
    with quiet_flwr(not verbose):
        with tempfile.TemporaryDirectory(prefix="fenji-secagg-sites-") as tmp:
            root = Path(tmp)
            site_dirs, encoding, initial, train_rows = _prepare(root, sites, rows, spec)
            folder = root / "replies"
            folder.mkdir()
            config = {"encoding": json.dumps(encoding), "seed": SEED, "keep-update": check}
            server_app = ServerApp()

            @server_app.main()
            def main(grid, context) -> None:
                current = [initial]
                for round_ in range(1, rounds + 1):
                    seconds, aggregate = one_round(grid, context, initial=current, config=config, sites=sites,
                                                   secagg=True, max_weight=max_weight)
                    records = collect_replies(folder, sites=sites, stages=STAGES,
                                              what=f"SecAgg+ round {round_} at {sites} sites")
                    per_site = [0] * sites
                    for r in records:
                        per_site[r["site"]] += r["bytes"]
                    site_bytes.extend(per_site)
                    round_s.append(seconds)
                    if check:
                        differences.append(float(np.max(np.abs(
                            flat_values(aggregate) - _plain_average(folder, train_rows)))))
                    # Flower's plain FedAvg fit round from the same model, in the same run: the baseline
                    # SecAgg+'s round time is compared with (Fenji's rounds also evaluate; this one does not).
                    seconds, _ = one_round(grid, context, initial=current, config={**config, "keep-update": False},
                                           sites=sites, secagg=False, max_weight=max_weight)
                    collect_replies(folder, sites=sites, stages=[PLAIN_STAGE],
                                    what=f"plain round {round_} at {sites} sites")
                    plain_s.append(seconds)
                    current = aggregate
                final.append(flat_values(current))

            reset_peak()
            baseline_mb = current_rss_mb()
            started = time.perf_counter()
            with _ray_environment():
                run_simulation(server_app=server_app, client_app=_client_app(folder, site_dirs, spec),
                               num_supernodes=sites,
                               backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                               "init_args": dict(_RAY_INIT_ARGS)},
                               verbose_logging=verbose)
            total = time.perf_counter() - started
            peak_mb = peak_kb() / 1024
            if not final:
                raise BenchUnavailable("the SecAgg+ simulation ended before its last round; rerun with verbose=True")
            client_pids = _pids(folder)
            params = EncodingParams.from_dict(encoding)
            aurocs = [evaluate_flat(load_site_data(d, spec), params, final[0])["auroc"] for d in site_dirs]
    n_params = int(initial.size)
    update_bytes = float(statistics.median(site_bytes))
    float32_bytes = 4 * (n_params + 1)
    record = {
        "mode": "secagg", "sites": sites, "rounds": rounds, "rows_per_site": rows, "parameters": n_params,
        "total_seconds": total, "round_seconds": spread(round_s[1:] or round_s), "aggregate_seconds": None,
        "round_seconds_plain": spread(plain_s[1:] or plain_s),
        "round_time_ratio_plain": statistics.median(round_s[1:] or round_s) / statistics.median(plain_s[1:] or plain_s),
        "update_bytes_per_site": update_bytes, "float32_bytes": float32_bytes,
        "bytes_ratio_float32": update_bytes / float32_bytes,
        "coordinator_baseline_mb": baseline_mb, "coordinator_peak_mb": peak_mb,
        "mean_auroc": float(np.nanmean(aurocs)),
        "settings": {"num_shares": NUM_SHARES, "reconstruction_threshold": RECONSTRUCTION_THRESHOLD,
                     "clipping_range": CLIPPING_RANGE, "quantization_range": QUANTIZATION_RANGE,
                     "modulus_range": MODULUS_RANGE, "max_weight": max_weight,
                     "engine": "Flower simulation (Ray on loopback)", "client_processes": len(client_pids)},
    }
    if check:
        record["aggregate_check"] = {"max_abs_difference_from_plain": differences,
                                     "quantisation_bound": quantisation_bound(
                                         weight_ratio=min(train_rows) / max_weight)}
    return record


def main(argv: Sequence[str] | None = None) -> None:
    """``<sites> <rounds> <rows>``: one JSON line, the last on stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    numbers = [a for a in args if a != "--check"]
    if len(numbers) != 3 or not all(a.isdigit() for a in numbers):
        raise SystemExit("usage: python -m bench.secagg_sites <sites> <rounds> <rows> [--check]")
    record = run_secagg_sites(*(int(a) for a in numbers), check=check)
    print(json.dumps(record, default=float), flush=True)


if __name__ == "__main__":
    main()
