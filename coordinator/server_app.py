"""The coordinator's Flower ServerApp: federated statistics, then encrypted FedAvg rounds.

``run_federation`` is the whole protocol as a plain function of a ``Grid``; the ServerApp only
builds its settings and hands it the grid. In every phase a site's bad reply is left out and named
(``FederationOutcome.excluded``) while ``min-sites`` good ones remain; a decrypted aggregate that
contradicts the sites' declared row counts fails the run instead of becoming the model.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from coordinator.aggregator import Aggregator
from coordinator.errors import NotEnoughSitesError
from coordinator.outcome import FederationOutcome, RunSettings
from coordinator.quorum import registered_names
from coordinator.strategy import (
    EncryptedFedAvg,
    ReplyScreen,
    ScreenedFedAvg,
    check_total,
    cohort_of,
    declared_rows,
    inputs_of,
    site_dp_of,
)
from coordinator.streaming import RunningSum, StreamingGrid
from federation.crypto import WIDE_SCALE_BITS
from federation.curves import CURVES_RECORD
from federation.keyholder_api import Decryptor, DecryptRequest
from federation.tags import QueryLabel
from models.calibration import calibration_statistics_size, fit_calibration
from models.encoding import Encoder, SiteStatistics
from models.nets import build_model, get_flat
from models.spec import TaskSpec

__all__ = ["build_server_app", "run_federation"]


def _wait_for_nodes(grid: Grid, expected: int, min_sites: int, timeout: float) -> list[int]:
    """Wait for ``expected`` sites to connect; fail unless at least ``min_sites`` did."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if len(nodes) < min_sites:
        raise NotEnoughSitesError(
            f"only {len(nodes)} site(s) connected: a federated run needs at least {min_sites} (min-sites)"
        )
    return nodes


def _send(grid: Grid, nodes: list[int], message_type: str, content: RecordDict, timeout: float) -> Iterable[Message]:
    messages = [Message(content=content, message_type=message_type, dst_node_id=n) for n in nodes]
    return grid.send_and_receive(messages, timeout=timeout)  # a generator on a StreamingGrid


def _running(aggregator: Aggregator | None, length: int) -> RunningSum | None:
    return None if aggregator is None else aggregator.running(length=length, scale_bits=WIDE_SCALE_BITS)


def _decrypt_sum(replies: list[Message], running: RunningSum | None, key_holder: Decryptor | None,
                 length: int, label: QueryLabel, min_sites: int) -> np.ndarray:
    """The sum of the sites' (screened) vectors: encrypted (added as they arrived into ``running``),
    and decrypted by the key holder only for the cohort of enrolled sites whose tags it carries (at
    least its min-sites)."""
    if running is not None and key_holder is not None:
        summed = running.serialize()
        request = DecryptRequest.of(replace(label, inputs=inputs_of(replies)), cohort=cohort_of(replies),
                                    length=length, scale_bits=WIDE_SCALE_BITS,
                                    site_dp=site_dp_of(replies))
        return np.asarray(key_holder.decrypt_aggregate(summed, request))
    if len(replies) < min_sites:
        raise NotEnoughSitesError(f"{len(replies)} site(s) answered, {min_sites} needed")
    return np.sum([r.content["arrays"].to_numpy_ndarrays()[0] for r in replies], axis=0)


def _seen(replies: list[Message], last_seen: dict[str, str]) -> None:
    """Stamp now as the last time each site of ``replies`` answered (its ``site`` record names it)."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for reply in replies:
        if "site" in reply.content:
            last_seen[str(reply.content["site"]["site-id"])] = now


def _calibration_rows(spec: TaskSpec, summed: np.ndarray) -> float:
    """The row count inside summed calibration statistics (layout: models.calibration): every row
    falls in one logit bin (binary), or is counted in the last slot (temperature scaling)."""
    return float(np.sum(summed)) if spec.label.kind == "binary" else float(summed[-1])


def run_federation(
    grid: Grid,
    settings: RunSettings,
    key_holder: Decryptor | None,
    *,
    n_sites: int | None = None,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    screen: ReplyScreen | None = None,
) -> FederationOutcome:
    """Federated statistics, ``settings.rounds`` rounds of (encrypted) FedAvg, final evaluation.

    ``screen``, if given, is the run's reply screen (its ``min_sites`` and ``aggregator`` are set
    here): a caller reads from it what was left out even when the run fails. Each phase waits
    ``settings.timeout`` seconds for replies (``round-timeout``) and goes on with the sites that
    answered while at least ``min-sites`` remain; a site that never answers is named by the name
    its SuperNode was registered under (``coordinator.quorum.registered_names``), if any.

    Raises
    ------
    NotEnoughSitesError
        If a phase has fewer than ``min-sites`` usable replies (the message names those left out).
    AggregateCheckError
        If a decrypted aggregate is inconsistent (e.g. a ciphertext made under another key).
    """
    started = time.monotonic()
    grid = StreamingGrid(grid)  # replies are screened and added as they arrive, then dropped
    spec = settings.task
    run_id = uuid.uuid4().hex
    base = ConfigRecord({"task-json": spec.model_dump_json(), "task-name": spec.name, "run-id": run_id,
                         "plaintext": not settings.encrypt, "seed": settings.seed, "num-rounds": settings.rounds})
    aggregator: Aggregator | None = None
    contexts: dict[str, bytes] = {}
    min_sites = settings.min_sites
    if settings.encrypt:
        if key_holder is None:
            raise ValueError("an encrypted run needs a key holder")
        info = key_holder.info()
        # min-sites is the key holder's: the coordinator may ask for more, never for fewer.
        min_sites = max(settings.min_sites, info.min_sites)
        packed = info.packed_context_bytes if settings.packed and info.packed_context else None
        aggregator = Aggregator(info.public_context_bytes, packed)
        # The public contexts (about 260 kB each) travel once, with the run's first message; every
        # later message names them by digest and the sites use the copies they verified then.
        base["ckks-context-sha256"] = hashlib.sha256(info.public_context_bytes).hexdigest()
        contexts["ckks-context"] = info.public_context_bytes
        contexts["ckks-context-signature"] = info.signature_bytes
        if packed is not None:
            base["packed-context-sha256"] = hashlib.sha256(packed).hexdigest()
            contexts["packed-context"] = packed
            contexts["packed-context-signature"] = info.packed_signature_bytes
    nodes = _wait_for_nodes(grid, n_sites or min_sites, min_sites, settings.timeout)
    label = QueryLabel(run_id=run_id, phase="stats", round=0, task=spec.name)
    # Every reply is screened before it counts; a bad one is left out and named (coordinator.strategy).
    screen = screen or ReplyScreen(min_sites=min_sites, aggregator=aggregator)
    screen.min_sites, screen.aggregator = min_sites, aggregator
    screen.site_of.update(registered_names(grid))  # until a site's own reply names it

    # 1. Federated preprocessing: global statistics from the sum of the sites' encrypted statistics.
    size = SiteStatistics.size(spec)
    running = _running(aggregator, size)
    replies = screen.usable(_send(grid, nodes, "query.stats", RecordDict({"config": ConfigRecord(dict(base) | contexts)}),
                                  settings.timeout),
                            phase="stats", server_round=0, expected_nodes=nodes, length=size,
                            scale_bits=WIDE_SCALE_BITS, into=running)
    totals = _decrypt_sum(replies, running, key_holder, size, label, min_sites)
    encoding = SiteStatistics(spec, totals).encoding_params()
    check_total("stats: the row count", encoding.n_rows, declared_rows(replies), absolute=0.5)
    rows_by_node = {r.metadata.src_node_id: int(r.content["metrics"]["num-examples"]) for r in replies}
    last_seen: dict[str, str] = {}
    _seen(replies, last_seen)
    # Each site's report rides with its statistics reply (the node's egress guard checked every number).
    site_reports = {str(r.content["site"]["site-id"]): {str(k): float(v) for k, v in r.content["report"].items()}
                    for r in replies if "report" in r.content and "site" in r.content}

    # 2. Training rounds.
    n_inputs = Encoder(spec, encoding).width
    initial = get_flat(build_model(spec, n_inputs, seed=settings.seed))
    # Row counts are whole: the decrypted total (CKKS, within 1e-3) is rounded, so that the sites'
    # weights n_i / N add up to 1 and a packed sum's weight check holds (check_total bounds the rounding).
    total_rows = float(round(encoding.n_rows))
    train_config = ConfigRecord(dict(base) | {
        "encoding": json.dumps(encoding.to_dict()), "total-examples": total_rows,
    })
    if settings.local_epochs is not None:
        train_config["epochs"] = settings.local_epochs
    if settings.learning_rate is not None:
        train_config["learning-rate"] = settings.learning_rate
    if settings.proximal_mu:
        train_config["proximal-mu"] = settings.proximal_mu
    train_config["num-rounds"] = settings.rounds
    if settings.dp_epsilon:
        train_config["dp-epsilon"] = settings.dp_epsilon
        train_config["dp-delta"] = settings.dp_delta
        train_config["dp-max-grad-norm"] = settings.dp_max_grad_norm
    evaluate_config = ConfigRecord({k: v for k, v in train_config.items() if k not in (
        "ckks-context-sha256", "packed-context-sha256")})
    common = dict(
        min_train_nodes=min_sites, min_evaluate_nodes=min_sites, min_available_nodes=min_sites,
        node_timeout=settings.timeout,
    )
    strategy: ScreenedFedAvg
    if aggregator is not None and key_holder is not None:
        train_label = replace(label, phase="train")
        strategy = EncryptedFedAvg(aggregator=aggregator, key_holder=key_holder, n_params=initial.size,
                                   total_examples=total_rows, screen=screen, label=train_label,
                                   packed=aggregator.packed_context is not None, **common)
    else:
        strategy = ScreenedFedAvg(screen=screen, n_params=initial.size, **common)

    history: list[dict[str, float]] = []

    round_started = [time.monotonic()]

    def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round > 0:
            row = {"round": float(server_round), **dict(result_so_far.get(server_round, {}))}
            # Wall time of the round (training, its aggregation and decryption, federated evaluation).
            now = time.monotonic()
            row["round-seconds"], round_started[0] = now - round_started[0], now
            if strategy.update_bytes:
                row["update-bytes"] = strategy.update_bytes[-1]
            if isinstance(strategy, EncryptedFedAvg) and strategy.aggregation_seconds:
                row["aggregate-seconds"] = strategy.aggregation_seconds[-1]
            history.append(row)
            if on_round:
                on_round(server_round, row)
        return None

    result_so_far: dict[int, MetricRecord] = {}

    def record_evaluate(contents: list[RecordDict], weighted_by_key: str) -> MetricRecord:
        merged = aggregate_metricrecords(contents, weighted_by_key)
        result_so_far[len(result_so_far) + 1] = merged
        return merged

    strategy.evaluate_metrics_aggr_fn = record_evaluate
    round_started[0] = time.monotonic()
    result = strategy.start(
        grid=grid, initial_arrays=ArrayRecord([initial]), num_rounds=settings.rounds,
        timeout=settings.timeout, train_config=train_config, evaluate_config=evaluate_config,
        evaluate_fn=after_round,
    )
    flat = result.arrays.to_numpy_ndarrays()[0] if result.arrays is not None else initial

    # 3. Federated calibration: one more encrypted sum (see models.calibration).
    size = calibration_statistics_size(spec)
    running = _running(aggregator, size)
    replies = screen.usable(
        _send(grid, nodes, "query.calibrate", RecordDict({"arrays": ArrayRecord([flat]), "config": train_config}),
              settings.timeout),
        phase="calibrate", server_round=settings.rounds, expected_nodes=nodes, length=size, scale_bits=WIDE_SCALE_BITS,
        into=running,
    )
    summed = _decrypt_sum(replies, running, key_holder, size, replace(label, phase="calibrate"), min_sites)
    check_total("calibration: the row count", _calibration_rows(spec, summed), declared_rows(replies), absolute=0.5)
    _seen(replies, last_seen)
    calibration = fit_calibration(spec, summed)

    # 4. Final evaluation: the calibrated global model, each site's personalised model, and each
    # site's local-only baseline trained on the same budget.
    final_config = ConfigRecord(dict(evaluate_config) | {
        "final": True, "local-only-epochs": (settings.local_epochs or spec.model.local_epochs) * settings.rounds,
        "calibration": json.dumps(calibration.to_dict()),
        # Off: the sites skip their personalisation step (node_agent.client_app), not just its report.
        "personalisation": settings.personalisation,
    })
    # A site whose final evaluation fails is named in ``excluded`` and left out of the per-site table.
    final = screen.usable(
        _send(grid, nodes, MessageType.EVALUATE, RecordDict({"arrays": ArrayRecord([flat]), "config": final_config}),
              settings.timeout),
        phase="final-evaluate", server_round=settings.rounds, expected_nodes=nodes, need_site=True,
    )
    _seen(final, last_seen)
    sites = {
        str(r.content["site"]["site-id"]): {k: float(v) for k, v in r.content["metrics"].items()}
        for r in final
    }
    personalisation = {str(r.content["site"]["site-id"]): str(r.content["site"]["personalisation"])
                       for r in final if "personalisation" in r.content["site"]}
    train_rows = {str(r.content["site"]["site-id"]): rows_by_node.get(r.metadata.src_node_id, 0) for r in final}
    return FederationOutcome(
        task=spec, encoding=encoding, flat=np.asarray(flat), n_inputs=n_inputs, sites=dict(sorted(sites.items())),
        rounds=history, encrypted=settings.encrypt, seconds=time.monotonic() - started, calibration=calibration,
        personalisation=dict(sorted(personalisation.items())), train_rows=dict(sorted(train_rows.items())),
        excluded=screen.named(),
        site_audit_heads={str(r.content["site"]["site-id"]): str(r.content["site"].get("audit-head", ""))
                          for r in final},
        site_reports=dict(sorted(site_reports.items())), last_seen=dict(sorted(last_seen.items())),
        site_curves={str(r.content["site"]["site-id"]): {k: float(v) for k, v in r.content[CURVES_RECORD].items()}
                     for r in sorted(final, key=lambda r: str(r.content["site"]["site-id"])) if CURVES_RECORD in r.content},
    )


def build_server_app(
    settings: RunSettings,
    key_holder: Decryptor | None,
    *,
    n_sites: int | None = None,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    on_done: Callable[[FederationOutcome], None] | None = None,
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        outcome = run_federation(grid, settings, key_holder, n_sites=n_sites, on_round=on_round)
        if on_done:
            on_done(outcome)

    return app
