"""The ServerApp that ``flwr run`` starts on Flower's deployment engine.

The coordinator's federation (``coordinator.server_app.run_federation``) reaches the key holder only
over its HTTP API (``FENJI_KEYHOLDER_URL``, with the coordinator's ``FENJI_KEYHOLDER_TOKEN``): the key
holder is another party's service, and the SuperNodes encrypt only under the public context it
signed. After the run, the model is registered and the run audited in the coordinator's
``FENJI_HOME``, as ``fenji sim --register`` does.

The run also reports itself in its own log, one ``fenji-event {json}`` line per completed round
(``round``), then ``result`` or ``failed`` (with the sites left out and why). Flower carries that log
to ``flwr run --stream`` and ``flwr log`` over its Control API; the coordinator service's job runner
(``fenji.deployment_jobs``) reads these lines (``read_event``) for a job's progress and record.

A run with ``kind="analytics"`` asks the sites one federated-statistics or surveillance query (``query``:
its canonical JSON) instead of training: the coordinator's own ``run_query`` or ``run_surveillance``,
with the key holder as above, audited in the coordinator's log (``analytics-query`` /
``surveillance-query``, or ``analytics-query-failed`` / ``surveillance-query-failed`` with the sites
left out); its ``result`` event carries the answer as the service stores it (``answer``, with the
sites' audit heads), the same dict the simulation engine's runner returns. Any other ``kind`` than
``"training"`` (the default) or ``"analytics"`` is refused (audited ``run-refused``): a typo never
starts a training run. Whatever fails a run, it is audited and reported as ``failed`` before it is
raised on to Flower.
"""

from __future__ import annotations

import json
from logging import INFO
from typing import Any

from flwr.app import Context
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp

from coordinator.audit import AuditLog
from coordinator.keyholder_client import KeyHolderClient
from coordinator.outcome import FederationOutcome, RunSettings
from coordinator.registry import register_outcome
from coordinator.server_app import run_federation
from coordinator.settings import CoordinatorSettings, load_coordinator_settings
from coordinator.strategy import ReplyScreen
from federation.errors import SettingsError
from models.errors import first_line

__all__ = ["EVENT_PREFIX", "app", "read_event", "report"]

EVENT_PREFIX = "fenji-event "

app = ServerApp()


def report(event: str, **payload: Any) -> None:
    """One ``fenji-event`` line in the run's log (``read_event`` reads it back)."""
    line = json.dumps({"event": event, **payload}, default=float, separators=(",", ":"))
    flwr_log(INFO, "%s%s", EVENT_PREFIX, line)


def read_event(line: str) -> dict[str, Any] | None:
    """The event a log line reports (``{"event": "round" | "result" | "failed", ...}``), or None."""
    at = line.find(EVENT_PREFIX)
    if at < 0:
        return None
    try:
        event = json.loads(line[at + len(EVENT_PREFIX):].strip())
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


def _report_round(server_round: int, metrics: dict[str, float]) -> None:
    report("round", round=server_round, metrics=metrics)


def _result(outcome: FederationOutcome, model: str, version: str) -> dict[str, Any]:
    return {"sites": outcome.sites, "excluded": [e.to_dict() for e in outcome.excluded], "model": model,
            "version": version, "encrypted": outcome.encrypted, "seconds": round(outcome.seconds, 2),
            "calibration": outcome.calibration.kind, "train_rows": outcome.train_rows,
            "personalisation": outcome.personalisation, "site_audit_heads": outcome.site_audit_heads,
            "site_reports": outcome.site_reports, "last_seen": outcome.last_seen}


def _key_holder(coordinator: CoordinatorSettings, encrypt: bool) -> KeyHolderClient | None:
    if not encrypt:
        return None
    if not coordinator.keyholder_url:
        raise SettingsError("an encrypted run needs the key holder: set FENJI_KEYHOLDER_URL and "
                            "FENJI_KEYHOLDER_TOKEN where the SuperLink runs")
    return KeyHolderClient(coordinator.keyholder_url, coordinator.keyholder_token)


def _answer(grid: Grid, settings: RunSettings, text: str, key_holder: KeyHolderClient | None, audit: AuditLog,
            screen: ReplyScreen) -> dict[str, Any]:
    """The answer of the query ``text`` about ``settings.task``, as the service stores it
    (``coordinator.service.queries.result_of``, or a surveillance report); either kind of query screens
    its replies with ``screen``, which names the sites left out even when it fails."""
    from coordinator.analytics import run_query
    from coordinator.quorum import registered_names
    from coordinator.service.queries import result_of
    from coordinator.syndromic import run_surveillance
    from federation.surveillance import parse_any_query
    from fenji.surveillance_jobs import report_of

    query = parse_any_query(text)
    screen.site_of.update(registered_names(grid))  # a site that never answers is named as registered
    parties = {"task": settings.task, "min_sites": settings.min_sites, "timeout": settings.timeout, "audit": audit,
               "screen": screen}
    if query.kind == "syndromes":  # each district's sum, or a clinic's own series (coordinator.syndromic)
        return report_of(run_surveillance(grid, query, key_holder, **parties))
    return result_of(run_query(grid, query, key_holder, **parties))


def _query_main(grid: Grid, context: Context, coordinator: CoordinatorSettings, run_config: dict[str, Any]) -> None:
    """A ``kind="analytics"`` run: one query, its answer (or the failure, naming the sites left out) reported.
    Any failure is audited (``coordinator.analytics.audit_failure``) and reported, then raised on."""
    from coordinator.analytics import audit_failure

    audit, text = AuditLog(coordinator.audit_path), str(run_config.get("query", ""))
    screen = ReplyScreen(min_sites=1, aggregator=None)  # run_query / run_surveillance complete it
    try:
        settings = RunSettings.from_run_config(run_config)
        answer = _answer(grid, settings, text, _key_holder(coordinator, settings.encrypt), audit, screen)
    except Exception as exc:  # noqa: BLE001 - a query that does not parse, a refusal, anything: all on the record
        left_out = [e.to_dict() for e in screen.named()]
        audit_failure(audit, text, exc, task=str(run_config.get("task", "")), excluded=left_out, engine="deployment",
                      flower_run_id=context.run_id)
        report("failed", error=type(exc).__name__, reason=first_line(exc), excluded=left_out)
        raise
    report("result", answer=answer, engine="deployment", flower_run_id=context.run_id)


def _training_main(grid: Grid, context: Context, coordinator: CoordinatorSettings, run_config: dict[str, Any]) -> None:
    """A training run: the federation, then the model registered and the run audited; any failure (of
    either) is audited and reported, naming the sites left out, then raised on."""
    screen: ReplyScreen | None = None
    try:
        settings = RunSettings.from_run_config(run_config)
        key_holder = _key_holder(coordinator, settings.encrypt)
        screen = ReplyScreen(min_sites=settings.min_sites, aggregator=None)  # run_federation completes it
        outcome = run_federation(grid, settings, key_holder, on_round=_report_round, screen=screen)
        registered = register_outcome(outcome, tracking_uri=coordinator.tracking_uri,
                                      extra_params={"engine": "deployment", "flower-run-id": context.run_id})
    except Exception as exc:  # noqa: BLE001 - a refused or failed run is part of the record too, whatever failed
        left_out = [e.to_dict() for e in screen.named()] if screen is not None else []
        AuditLog(coordinator.audit_path).append(
            actor="coordinator", action="training-run-failed", task=str(run_config.get("task", "")),
            rounds=run_config.get("num-server-rounds"), encrypted=run_config.get("encrypt"), reason=str(exc),
            error=type(exc).__name__, engine="deployment", flower_run_id=context.run_id, excluded=left_out)
        report("failed", error=type(exc).__name__, reason=first_line(exc), excluded=left_out)
        raise
    AuditLog(coordinator.audit_path).append(
        actor="coordinator", action="training-run", task=settings.task.name, rounds=settings.rounds,
        encrypted=settings.encrypt, sites=sorted(outcome.sites), model=registered.name, version=registered.version,
        run_id=registered.run_id, engine="deployment", flower_run_id=context.run_id,
        excluded=[e.to_dict() for e in outcome.excluded], site_audit_heads=outcome.site_audit_heads,
    )
    report("result", **_result(outcome, registered.name, str(registered.version)))


@app.main()
def _deployment_main(grid: Grid, context: Context) -> None:
    coordinator = load_coordinator_settings()
    run_config = dict(context.run_config)
    kind = run_config.get("kind", "training")
    if kind == "analytics":
        _query_main(grid, context, coordinator, run_config)
    elif kind == "training":
        _training_main(grid, context, coordinator, run_config)
    else:  # a typo must not start a training run
        refused = SettingsError(f"run config kind = {kind!r}: 'training' or 'analytics' (pyproject.toml's "
                                "[tool.flwr.app.config])")
        AuditLog(coordinator.audit_path).append(actor="coordinator", action="run-refused", kind=str(kind),
                                                reason=str(refused), error=type(refused).__name__,
                                                engine="deployment", flower_run_id=context.run_id)
        report("failed", error=type(refused).__name__, reason=first_line(refused), excluded=[])
        raise refused
