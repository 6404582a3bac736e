"""Run one surveillance query on Flower's simulation engine, over site folders.

The parties are those of ``simulation.engine``: the key holder as its own process on loopback, the
coordinator's ``run_surveillance`` in the ServerApp, and one ClientApp per site folder. Each site
answers as its own policy says (``SitePolicy.surveillance``); ``allow_surveillance_at_sites`` sets
that as the sites' admins would (``fenji node surveillance``), with each site's district.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

from federation.settings import configure_environment
from models.spec import TaskSpec
from simulation.engine import approve_at_sites, run_key_holder, simulate

__all__ = ["allow_surveillance_at_sites", "districts_of", "run_simulated_surveillance"]


def districts_of(site_dirs: Sequence[Path], *, default: str | None = None) -> dict[str, str]:
    """The synthetic clinics' districts (``simulation.synth.DEFAULT_CLINICS``) for the folders named after
    them; other folders get ``default`` (None: they keep their own policy's)."""
    from simulation.synth import DEFAULT_CLINICS

    known = {p.name: p.district for p in DEFAULT_CLINICS}
    names = [Path(s).name for s in site_dirs]
    return {n: known.get(n, default) for n in names if n in known or default is not None}


def allow_surveillance_at_sites(site_dirs: Sequence[Path], spec: TaskSpec, districts: Mapping[str, str], *,
                                clinic_series: Mapping[str, str] | None = None, approve: bool = True) -> None:
    """Allow surveillance about ``spec`` at each site, in its district (``districts``: site folder name ->
    district), as each site's admin would; ``clinic_series`` names the sites that publish their own
    series ("week" or "day"). With ``approve``, ``spec``'s plan is approved first."""
    from node_agent.budget import node_audit
    from node_agent.policy import load_site_policy, policy_lock, save_site_policy

    if approve:
        approve_at_sites(site_dirs, spec, rounds=1)
    for site_dir in site_dirs:
        with policy_lock(site_dir):
            policy = load_site_policy(site_dir)
            rules = policy.surveillance
            rules.allowed, rules.district = True, districts.get(Path(site_dir).name, rules.district)
            rules.clinic_series = (clinic_series or {}).get(Path(site_dir).name, rules.clinic_series)
            save_site_policy(site_dir, policy)
            node_audit(site_dir).append(actor="simulation", action="policy-changed", task=spec.name,
                                        surveillance=rules.model_dump())


def run_simulated_surveillance(query, site_dirs: Sequence[Path], *, task: TaskSpec, keyholder_home: Path | None = None,
                               encrypt: bool = True, verbose: bool = False, egress_log: Path | None = None,
                               audit_log: Path | None = None):
    """The ``SurveillanceResult`` of ``query`` about ``task`` over the site folders, each answering as its
    own policy says (see ``allow_surveillance_at_sites``).

    Raises
    ------
    NotEnoughSitesError
        No district could be summed and no clinic published its own series.
    """
    configure_environment()
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from coordinator.audit import AuditLog
    from coordinator.syndromic import run_surveillance
    from keyholder.settings import load_keyholder_settings
    from node_agent.client_app import build_client_app

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    settings = load_keyholder_settings()
    results: list = []
    errors: list[BaseException] = []
    with ExitStack() as stack:
        key_holder = run_key_holder(stack, site_dirs, keyholder_home) if encrypt else None
        server_app = ServerApp()

        @server_app.main()
        def main(grid: Grid, context: Context) -> None:
            import time

            deadline = time.monotonic() + 120.0
            while len(list(grid.get_node_ids())) < len(site_dirs) and time.monotonic() < deadline:
                time.sleep(0.2)
            try:
                results.append(run_surveillance(grid, query, key_holder, task=task, min_sites=settings.min_sites,
                                                audit=AuditLog(audit_log) if audit_log else None))
            except Exception as exc:  # noqa: BLE001 - handed back to the caller: Flower would only log it
                errors.append(exc)

        client_app = build_client_app([Path(p).resolve() for p in site_dirs], egress_log=egress_log,
                                      allow_plaintext=not encrypt)
        simulate(server_app, client_app, len(site_dirs), verbose=verbose)
    if errors:
        raise errors[0]
    if not results:
        raise RuntimeError("the query ended without a result; run with verbose=True for Flower's log")
    return results[0]
