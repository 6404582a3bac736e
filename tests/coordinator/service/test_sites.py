"""The sites in the coordinator service: what a job's runner learnt of each site (last reply, report,
audit head) is written with the job's ``job-succeeded`` entry and served at ``/sites``, each role seeing
its part. The runner here is the seam's own (a scripted function); tests/fenji/test_sdk.py runs the
same path on Flower's simulation with the nodes' real reports."""

from __future__ import annotations

import pytest

from coordinator.service.db import Site
from coordinator.service.jobs import JobRequest, JobResult
from coordinator.service.sites import Sighting
from tests.coordinator.service.test_jobs import submit, wait_for, worker  # noqa: F401  (a fixture)

REPORT = {"rows-from": 100.0, "rows-to": 200.0, "quarantine-from": 0.02, "quarantine-to": 0.05,
          "plans-approved": 2.0, "runs-accepted": 3.0, "runs-refused": 1.0, "dp-spent": 1.5, "dp-left": 8.5,
          "dp-budget": 10.0, "period-days": 365.0, "quality-decisions": 55.0, "quality-over-referral-rate": 0.333}


def runner_seeing(sightings: dict[str, Sighting]):
    def runner(request: JobRequest, on_round) -> JobResult:
        on_round(1, {"auroc": 0.7})
        return JobResult(sites={"clinic_a": {"auroc": 0.7}}, sightings=sightings)

    return runner


def test_a_jobs_sightings_become_the_sites_each_role_sees_its_part(service, worker):  # noqa: F811
    worker(runner_seeing({
        "clinic_a": Sighting(last_seen="2026-03-01T08:00:00+00:00", report=REPORT | {
            "bogus key!": 1.0, "dp-left-nan": float("nan")}, audit_head="a" * 64),
        "clinic_b": Sighting(),  # enrolled for the run, never answered
    }))
    job = submit(service, rounds=1)
    assert wait_for(service, job["id"])["status"] == "succeeded"
    with service.client("commissioner") as client:
        listed = client.get("/api/v1/sites").json()
        assert client.get("/api/v1/sites/no_such_clinic").status_code == 404
    assert [s["site"] for s in listed] == ["clinic_a", "clinic_b"]
    seen, silent = listed
    assert (seen["last_seen"], seen["last_job"], seen["audit_head"]) == ("2026-03-01T08:00:00+00:00", job["id"], "a" * 64)
    report = seen["report"]
    assert (report["task"], report["job_id"]) == ("triage", job["id"])
    assert report["rows"] == {"low": 100.0, "high": 200.0} and report["quarantine_rate"] == {"low": 0.02, "high": 0.05}
    assert (report["plans_approved"], report["runs_accepted"], report["runs_refused"]) == (2, 3, 1)
    assert report["budget"] == {"spent": 1.5, "left": 8.5, "total": 10.0, "period_days": 365}
    assert report["quality"] == {"decisions": 55.0, "over_referral_rate": 0.333} and seen["withheld"] == []
    assert silent["last_seen"] is None and silent["report"] is None and silent["enrolled_at"]
    for who in ("data_scientist", "admin"):  # the clinicians' decision-quality review is the commission's
        with service.client(who) as client:
            theirs = client.get("/api/v1/sites/clinic_a").json()
        assert theirs["report"]["quality"] is None and theirs["withheld"] == ["quality"]
        assert theirs["report"]["budget"] == report["budget"]  # what DP jobs and queries still may spend
    with service.client("admin") as client:
        [entry] = [e for e in client.get("/api/v1/audit", params={"limit": 1000}).json()["entries"]
                   if e["action"] == "job-succeeded"]
    assert entry["details"]["site_audit_heads"] == {"clinic_a": "a" * 64}  # the node's head, in this chain
    with service.coordinator.sessions() as session:  # only finite numbers under short names are kept
        stored = session.get(Site, "clinic_a").report_json
    assert "bogus key!" not in stored and "nan" not in stored.lower()


def test_a_later_job_updates_last_seen_and_keeps_the_report_a_silent_site_sent_before(service, worker):  # noqa: F811
    first = {"clinic_a": Sighting(last_seen="2026-03-01T08:00:00+00:00", report=REPORT)}
    second = {"clinic_a": Sighting(), "clinic_c": Sighting(last_seen="2026-03-02T09:00:00+00:00",
                                                          report={"rows-from": 0.0, "rows-to": 50.0})}
    runs = iter([first, second])
    worker(lambda request, on_round: runner_seeing(next(runs))(request, on_round))
    one, two = submit(service, rounds=1), submit(service, rounds=1)
    assert wait_for(service, two["id"])["status"] == "succeeded"
    with service.client("data_scientist") as client:
        a, c = client.get("/api/v1/sites").json()
    assert a["last_seen"] == "2026-03-01T08:00:00+00:00" and a["last_job"] == one["id"]  # not seen by job two
    assert a["report"]["job_id"] == one["id"] and a["report"]["rows"]["low"] == 100.0
    assert c["report"]["rows"] == {"low": 0.0, "high": 50.0} and c["report"]["budget"] is None
    assert c["enrolled_at"] >= a["enrolled_at"]


@pytest.mark.parametrize("site_id", ["../etc", "a" * 101, "clinic a"])
def test_a_site_id_outside_the_pattern_is_refused_before_the_database(service, site_id):
    with service.client("commissioner") as client:
        assert client.get(f"/api/v1/sites/{site_id}").status_code in (404, 422)
