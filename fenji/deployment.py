"""The ServerApp that ``flwr run`` starts on Flower's deployment engine.

It composes two parties, which is why it lives in a shell: the coordinator's federation
(``coordinator.server_app.run_federation``) and a key holder in a process of its own (the key holder
becomes a service of its own in a later step). After the run, the model is registered and the run
audited in the coordinator's ``FENJI_HOME``, as ``fenji sim --register`` does.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.audit import AuditLog
from coordinator.outcome import RunSettings
from coordinator.registry import register_outcome
from coordinator.server_app import run_federation
from coordinator.settings import load_coordinator_settings
from keyholder import start_key_holder_process
from models.errors import FenjiError

__all__ = ["app"]

app = ServerApp()


@app.main()
def _deployment_main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_run_config(dict(context.run_config))
    coordinator = load_coordinator_settings()
    manager, key_holder = start_key_holder_process(min_sites=settings.min_sites)
    try:
        outcome = run_federation(grid, settings, key_holder)
    except FenjiError as exc:  # a refused or failed run is part of the record too
        AuditLog(coordinator.audit_path).append(
            actor="coordinator", action="training-run-failed", task=settings.task.name, rounds=settings.rounds,
            encrypted=settings.encrypt, reason=str(exc), error=type(exc).__name__, engine="deployment",
            flower_run_id=context.run_id)
        raise
    finally:
        manager.shutdown()
    registered = register_outcome(outcome, tracking_uri=coordinator.tracking_uri,
                                  extra_params={"engine": "deployment", "flower-run-id": context.run_id})
    AuditLog(coordinator.audit_path).append(
        actor="coordinator", action="training-run", task=settings.task.name, rounds=settings.rounds,
        encrypted=settings.encrypt, sites=sorted(outcome.sites), model=registered.name, version=registered.version,
        run_id=registered.run_id, engine="deployment", flower_run_id=context.run_id,
        excluded=[e.to_dict() for e in outcome.excluded],
    )
