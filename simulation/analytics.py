"""Run one federated-statistics query on Flower's simulation engine, over site folders.

The parties are those of ``simulation.engine``: the key holder as its own process on loopback (its
folder keeps its ledger between queries, so its once-per-query and cohort rules hold across them),
the coordinator's ``run_query`` in the ServerApp, and one ClientApp per site folder. Each site
answers only what its own policy allows (``SitePolicy.analytics``); ``allow_analytics_at_sites``
sets that as the sites' admins would.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from federation.settings import configure_environment
from models.spec import TaskSpec
from simulation.engine import approve_at_sites, simulate_query

__all__ = ["allow_analytics_at_sites", "run_simulated_queries", "run_simulated_query"]


def allow_analytics_at_sites(site_dirs: Sequence[Path], spec: TaskSpec, kinds: Sequence[str], *,
                             dp_epsilon: float | None = None) -> None:
    """Approve ``spec``'s plan and the query ``kinds`` at each site (and its analytics noise, if given),
    as each site's admin would."""
    from node_agent.budget import node_audit
    from node_agent.policy import load_site_policy, policy_lock, save_site_policy

    approve_at_sites(site_dirs, spec, rounds=1)
    for site_dir in site_dirs:
        with policy_lock(site_dir):
            policy = load_site_policy(site_dir)
            policy.analytics.allowed = sorted(set(policy.analytics.allowed) | set(kinds))
            if dp_epsilon is not None:
                policy.analytics.dp_epsilon = dp_epsilon
            save_site_policy(site_dir, policy)
            node_audit(site_dir).append(actor="simulation", action="policy-changed", task=spec.name,
                                        analytics=policy.analytics.model_dump())


def run_simulated_query(query, site_dirs: Sequence[Path], *, task: TaskSpec, keyholder_home: Path | None = None,
                        encrypt: bool = True, allow: bool = True, verbose: bool = False, egress_log: Path | None = None,
                        audit_log: Path | None = None):
    """The ``AnalyticsResult`` of ``query`` about ``task`` over the site folders (``run_simulated_queries``)."""
    return run_simulated_queries([query], site_dirs, task=task, keyholder_home=keyholder_home, encrypt=encrypt,
                                 allow=allow, verbose=verbose, egress_log=egress_log, audit_log=audit_log)[0]


def run_simulated_queries(queries: Sequence, site_dirs: Sequence[Path], *, task: TaskSpec,
                          keyholder_home: Path | None = None, encrypt: bool = True, allow: bool = True,
                          verbose: bool = False, egress_log: Path | None = None, audit_log: Path | None = None) -> list:
    """The ``AnalyticsResult`` of each query about ``task`` over the site folders, asked one after the
    other in one simulation (each is its own run at the sites and at the key holder).

    With ``allow`` (the default), the queries' kinds are allowed at each site first
    (``allow_analytics_at_sites``); without it, the sites' own policies decide. ``audit_log`` is the
    coordinator's audit log file, where each query is recorded.

    Raises
    ------
    NotEnoughSitesError, PrivacyError
        Too few sites answered, or the key holder refused the sum.
    """
    configure_environment()
    from coordinator.analytics import run_query

    if allow:
        allow_analytics_at_sites(site_dirs, task, [q.kind for q in queries])

    def ask(grid, key_holder, **parties):
        return [run_query(grid, query, key_holder, task=task, **parties) for query in queries]

    return simulate_query(ask, site_dirs, keyholder_home=keyholder_home, encrypt=encrypt, verbose=verbose,
                          egress_log=egress_log, audit_log=audit_log, what="the queries")
