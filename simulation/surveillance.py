"""Run one surveillance query on Flower's simulation engine, over site folders.

The parties are those of ``simulation.engine``: the key holder as its own process on loopback, the
coordinator's ``run_surveillance`` in the ServerApp, and one ClientApp per site folder. Each site
answers as its own policy says (``SitePolicy.surveillance``); ``allow_surveillance_at_sites`` sets
that as the sites' admins would (``fenji node surveillance``), with each site's district.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from federation.settings import configure_environment
from models.spec import TaskSpec
from simulation.engine import approve_at_sites, simulate_query

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
    from coordinator.syndromic import run_surveillance

    def ask(grid, key_holder, **parties):
        return run_surveillance(grid, query, key_holder, task=task, **parties)

    return simulate_query(ask, site_dirs, keyholder_home=keyholder_home, encrypt=encrypt, verbose=verbose,
                          egress_log=egress_log, audit_log=audit_log)
