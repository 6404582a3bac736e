"""Surveillance runs over local site folders, for the coordinator's jobs worker and the demo.

The coordinator may not import the simulation (import-linter's layers), so this shell composes them:
``SimulationRunner.run_query`` hands a surveillance query (kind ``syndromes``) to ``answer``, which runs
it on Flower's simulation engine (``simulation.surveillance``) and turns the decrypted answer into
the report the service stores (``coordinator.surveillance.report``). With ``approve`` (a demo's
runner) each site first allows surveillance about the task in its district, as its admin would:
the synthetic clinics' districts come from the generator, other folders go to its default district.
``report_of`` is that report with the sites' audit heads, as either engine's runner returns it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["answer", "is_surveillance", "report_of"]


def is_surveillance(query: Any) -> bool:
    return getattr(query, "kind", None) == "syndromes"


def report_of(result: Any) -> dict[str, Any]:
    """The report of a ``SurveillanceResult`` (``surveillance_report``) with the sites' audit heads, under
    the key the service's query worker audits them by (``coordinator.service.queries.HEADS``)."""
    from coordinator.service.queries import HEADS
    from coordinator.surveillance.report import surveillance_report

    return surveillance_report(result) | {HEADS: dict(result.audit_heads)}


def answer(query: Any, site_dirs: Sequence[Path], *, task: str, keyholder_home: Path, encrypt: bool = True,
           approve: bool = True, audit_log: Path | None = None) -> dict[str, Any]:
    """The report of ``query`` about ``task`` over ``site_dirs`` (``report_of``); with ``audit_log`` (the
    coordinator's audit log file) an answered query is recorded there (``surveillance-query``).

    Raises
    ------
    NotEnoughSitesError
        No district could be summed and no clinic published its own series.
    """
    from models.spec import load_task
    from simulation.surveillance import (
        allow_surveillance_at_sites,
        districts_of,
        run_simulated_surveillance,
    )
    from simulation.synth import ClinicProfile

    spec = load_task(task)
    if approve:
        # A demo's sites: the synthetic clinics' own districts; a folder of another name (the tests' small
        # clinics) in the generator's default district, as a demo's admin would put it.
        allow_surveillance_at_sites(site_dirs, spec, districts_of(site_dirs, default=ClinicProfile.district))
    result = run_simulated_surveillance(query, site_dirs, task=spec, keyholder_home=keyholder_home, encrypt=encrypt,
                                        audit_log=audit_log)
    return report_of(result)
