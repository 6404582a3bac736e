"""Statistics and surveillance queries on Flower's deployment engine, with real processes on loopback: the
coordinator service's runner (``fenji.deployment_jobs.DeploymentRunner.run_query``) submits each as a
``kind="analytics"`` run of the app (``flwr run``), to the SuperLink over TLS with four clinics' SuperNodes
and the key holder's service (``tests/fenji/flower_processes.py``), with min-sites 3.

Three clinics allow the queries; the fourth has not (its admin approved the tasks' plans only), so it
declines each one and is named with its reason; a query kind no clinic allows fails, naming all four. The key holder's cohort rule makes that the only possible setup
for one federation: once a sum over all four were decrypted, a sum over three would give the fourth away.
The answers are checked against the same statistic on the three clinics' stored rows, pooled here.
"""

from __future__ import annotations

import shutil
from datetime import timedelta

import pandas as pd
import pytest

from coordinator.service.errors import JobFailed
from coordinator.service.queries import QueryRequest
from federation.analytics import MISSING, Count, Mean, categories
from federation.surveillance import SyndromeCounts
from fenji.deployment_jobs import DeploymentRunner
from models.spec import load_task
from node_agent.ingest import ingest_file
from node_agent.mapping import load_mapping
from node_agent.store import SiteStore
from simulation.analytics import allow_analytics_at_sites
from simulation.engine import approve_at_sites
from simulation.outbreak import SERIES_START
from simulation.surveillance import allow_surveillance_at_sites
from simulation.synth import ClinicProfile
from tests.fenji.flower_processes import CONNECTION, ROOT, start_federation

CLINICS = [
    ClinicProfile("clinic_a", 200, age_mean=45),
    ClinicProfile("clinic_b", 160, age_mean=70, severity_shift=0.3),
    ClinicProfile("clinic_c", 140, label_offset=0.4),
    ClinicProfile("clinic_d", 150, age_mean=60),
]
ALLOWING = ["clinic_a", "clinic_b", "clinic_c"]
SPEC = load_task("referral_risk")

pytestmark = pytest.mark.skipif(
    not all(shutil.which(c) for c in ("flower-superlink", "flower-supernode", "flwr")),
    reason="Flower's CLIs (flower-superlink, flower-supernode, flwr) are not on PATH",
)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    with start_federation(tmp_path_factory.mktemp("deployment-queries"), CLINICS, min_sites=3, rounds=1) as fed:
        yield fed


def _pooled(fed, spec) -> pd.DataFrame:
    frames = []
    for name in ALLOWING:
        with SiteStore(fed.sites[name], read_only=True) as store:
            frames.append(store.load(spec))
    return pd.concat(frames, ignore_index=True)


def test_queries_run_on_the_deployment_engine_and_a_site_that_disallows_them_declines(federation):
    fed = federation
    allow_analytics_at_sites([fed.sites[n] for n in ALLOWING], SPEC, ["count"])
    runner = DeploymentRunner(ROOT, CONNECTION, flwr_home=fed.flwr_home)

    answer = runner.run_query(QueryRequest(id=1, task=SPEC.name, query=Count(group_by="sex")))
    pooled = _pooled(fed, SPEC)
    assert answer["sites"] == ALLOWING and answer["rows"] == len(pooled), answer
    assert answer["columns"] == ["sex", "count", "suppressed_sites"], answer
    values = categories(SPEC, "sex")
    text = pooled["sex"].astype("string")
    groups = text.where(text.isin(values), MISSING).value_counts()
    exact = [c for c in answer["cells"] if c["suppressed_sites"] == 0]
    assert exact and all(c["count"] == groups.get(c["sex"], 0) for c in exact), (answer["cells"], groups)
    assert all(c["count"] < groups.get(c["sex"], 0) for c in answer["cells"] if c["suppressed_sites"]), answer
    assert [(e["site"], e["phase"]) for e in answer["excluded"]] == [("clinic_d", "analytics")], answer
    assert "count queries are not allowed by this site's policy" in answer["excluded"][0]["reason"], answer
    # A kind no clinic allows: the run fails, naming each clinic that declined.
    with pytest.raises(JobFailed, match="min-sites") as failed:
        runner.run_query(QueryRequest(id=2, task=SPEC.name, query=Mean(column="age")))
    assert failed.value.error == "NotEnoughSitesError", failed.value
    assert sorted((s["site"], s["phase"]) for s in failed.value.sites) == [(n, "analytics") for n in fed.sites]

    # Surveillance takes the same path: the clinics' triage rows (complaints) into one district's sum.
    triage = load_task("triage_text")
    for name, site_dir in fed.sites.items():
        with SiteStore(site_dir) as store:
            ingest_file(store, triage, fed.work / "exports" / f"{name}.csv", load_mapping(None))
    allow_surveillance_at_sites([fed.sites[n] for n in ALLOWING], triage, dict.fromkeys(ALLOWING, "north"))
    approve_at_sites([fed.sites["clinic_d"]], triage, rounds=1)  # its plan approved, surveillance not allowed
    query = SyndromeCounts(start=SERIES_START + timedelta(days=7), end=SERIES_START + timedelta(days=62))
    report = runner.run_query(QueryRequest(id=3, task=triage.name, query=query))
    assert report["districts"] == {"north": ALLOWING} and list(report["refused"]) == ["clinic_d"], report
    assert "surveillance is not allowed by this site's policy" in report["refused"]["clinic_d"], report
    assert report["series"] and report["query"]["kind"] == "syndromes", report
