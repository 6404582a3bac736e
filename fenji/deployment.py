"""The ServerApp that ``flwr run`` starts on Flower's deployment engine.

The coordinator's federation (``coordinator.server_app.run_federation``) reaches the key holder only
over its HTTP API (``FENJI_KEYHOLDER_URL``, with the coordinator's ``FENJI_KEYHOLDER_TOKEN``): the key
holder is another party's service, and the SuperNodes encrypt only under the public context it
signed. After the run, the model is registered and the run audited in the coordinator's
``FENJI_HOME``, as ``fenji sim --register`` does.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.audit import AuditLog
from coordinator.keyholder_client import KeyHolderClient
from coordinator.outcome import RunSettings
from coordinator.registry import register_outcome
from coordinator.server_app import run_federation
from coordinator.settings import load_coordinator_settings
from federation.errors import SettingsError
from models.errors import FenjiError

__all__ = ["app"]

app = ServerApp()


@app.main()
def _deployment_main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_run_config(dict(context.run_config))
    coordinator = load_coordinator_settings()
    try:
        key_holder = None
        if settings.encrypt:
            if not coordinator.keyholder_url:
                raise SettingsError("an encrypted run needs the key holder: set FENJI_KEYHOLDER_URL and "
                                    "FENJI_KEYHOLDER_TOKEN where the SuperLink runs")
            key_holder = KeyHolderClient(coordinator.keyholder_url, coordinator.keyholder_token)
        outcome = run_federation(grid, settings, key_holder)
    except FenjiError as exc:  # a refused or failed run is part of the record too
        AuditLog(coordinator.audit_path).append(
            actor="coordinator", action="training-run-failed", task=settings.task.name, rounds=settings.rounds,
            encrypted=settings.encrypt, reason=str(exc), error=type(exc).__name__, engine="deployment",
            flower_run_id=context.run_id)
        raise
    registered = register_outcome(outcome, tracking_uri=coordinator.tracking_uri,
                                  extra_params={"engine": "deployment", "flower-run-id": context.run_id})
    AuditLog(coordinator.audit_path).append(
        actor="coordinator", action="training-run", task=settings.task.name, rounds=settings.rounds,
        encrypted=settings.encrypt, sites=sorted(outcome.sites), model=registered.name, version=registered.version,
        run_id=registered.run_id, engine="deployment", flower_run_id=context.run_id,
        excluded=[e.to_dict() for e in outcome.excluded], site_audit_heads=outcome.site_audit_heads,
    )
