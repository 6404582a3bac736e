"""Training jobs through the API: queued, run one at a time by the worker through the injected runner,
progress and per-round metrics, cancellation between rounds, failures with the sites that failed,
restart safety, and an audit entry for every change. The runner here is the seam's own (a scripted
function, as httpx's MockTransport): Flower runs it for real in tests/fenji/test_jobs_runner.py."""

from __future__ import annotations

import threading
import time

import pytest

from coordinator.service import create_app
from coordinator.service.errors import JobFailed
from coordinator.service.jobs import RESTARTED, JobQueue, JobRequest, JobResult
from tests.coordinator.service.conftest import TASK, make_service, running
from tests.coordinator.service.test_postgres import postgres_url  # noqa: F401  (a fixture)

FINISHED = {"succeeded", "failed", "cancelled"}


def wait_for(service, job_id: int, done=lambda job: job["status"] in FINISHED, deadline: float = 120) -> dict:
    """Poll until ``done(job)``; the deadline only stops a hang, it asserts nothing about speed."""
    end = time.monotonic() + deadline
    with service.client("data_scientist") as client:
        while True:
            job = client.get(f"/api/v1/jobs/{job_id}").json()
            if done(job) or time.monotonic() > end:
                return job
            time.sleep(0.05)


def audit_actions(service, job_id: int) -> list[tuple[str, str]]:
    with service.client("admin") as client:
        entries = client.get("/api/v1/audit", params={"limit": 1000}).json()["entries"]
        assert client.get("/api/v1/audit/verify").json()["ok"]
    return [(e["action"], e["actor"]) for e in entries if e["details"].get("job_id") == job_id]


def submit(service, who: str = "data_scientist", **body) -> dict:
    with service.client(who) as client:
        response = client.post("/api/v1/jobs", json={"task": TASK, "rounds": 3} | body)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture()
def worker(service):
    """``start(runner)``: the service's queue runs jobs with ``runner`` until the test ends."""
    queue = service.coordinator.jobs
    yield queue.start
    queue.stop(timeout=60)


def scripted(rounds_seen: list[int], *, after_round=None, fail: Exception | None = None):
    def runner(request: JobRequest, on_round) -> JobResult:
        for r in range(1, request.rounds + 1):
            rounds_seen.append(r)
            on_round(r, {"auroc": 0.5 + r / 10, "log-loss": float("nan") if r == 1 else 0.4})
            if after_round:
                after_round(r)
        if fail is not None:
            raise fail
        return JobResult(sites={"clinic_a": {"auroc": 0.8}}, model="fenji-triage", version="4")

    return runner


def test_a_job_runs_with_progress_and_per_round_metrics_and_is_audited(service, worker):
    seen: list[int] = []
    halfway, go_on = threading.Event(), threading.Event()

    def pause(r: int) -> None:
        if r == 2:
            halfway.set()
            go_on.wait(60)

    worker(scripted(seen, after_round=pause))
    job = submit(service, dp_epsilon=2.0, personalisation=False)
    assert job["status"] in {"queued", "running"} and job["submitted_by"] == "test data_scientist"
    assert halfway.wait(60)
    running = wait_for(service, job["id"], lambda j: j["rounds_done"] == 2)
    assert running["status"] == "running" and running["progress"] == pytest.approx(2 / 3)
    go_on.set()
    done = wait_for(service, job["id"])
    assert done["status"] == "succeeded" and done["rounds_done"] == 3 and done["progress"] == 1.0
    assert [r["auroc"] for r in done["history"]] == pytest.approx([0.6, 0.7, 0.8])
    assert done["history"][0]["log-loss"] is None  # NaN has no JSON: shown as null
    assert done["result"]["version"] == "4" and done["result"]["sites"] == {"clinic_a": {"auroc": 0.8}}
    assert (done["dp_epsilon"], done["personalisation"]) == (2.0, False)
    assert audit_actions(service, job["id"]) == [("job-submitted", "test data_scientist"),
                                                 ("job-started", "coordinator"), ("job-succeeded", "coordinator")]
    with service.client("commissioner") as client:  # everyone may follow the jobs
        assert [j["id"] for j in client.get("/api/v1/jobs").json()] == [job["id"]]


def test_jobs_run_one_at_a_time_in_the_order_submitted(service, worker):
    order: list[int] = []

    def runner(request: JobRequest, on_round) -> JobResult:
        order.append(request.id)
        with service.coordinator.sessions() as session:
            from sqlalchemy import func, select

            from coordinator.service.db import Job

            assert session.execute(select(func.count()).where(Job.status == "running")).scalar_one() == 1
        return JobResult()

    first, second = submit(service), submit(service, who="admin")
    worker(runner)
    assert wait_for(service, second["id"])["status"] == "succeeded"
    assert order == [first["id"], second["id"]]


def test_a_queued_job_is_cancelled_at_once_and_a_finished_one_not_again(service):
    job = submit(service)  # no runner: it stays queued
    with service.client("admin") as client:
        cancelled = client.post(f"/api/v1/jobs/{job['id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and "before it started" in cancelled["reason"]
        again = client.post(f"/api/v1/jobs/{job['id']}/cancel")
        assert again.status_code == 409 and again.json()["error"] == "Conflict"
        assert client.post("/api/v1/jobs/999/cancel").status_code == 404
    assert audit_actions(service, job["id"]) == [("job-submitted", "test data_scientist"),
                                                 ("job-cancelled", "admin")]


def test_a_data_scientist_cancels_only_their_own_jobs_commissioners_and_admins_any(service):
    from coordinator.service.access import Role
    from coordinator.service.accounts import add_account

    with service.coordinator.sessions() as session:
        other = add_account(session, name="another data scientist", role=Role.DATA_SCIENTIST, actor="test")[1]
    mine, theirs, third = submit(service), submit(service), submit(service, who="admin")
    with service.client() as client:
        client.headers["Authorization"] = f"Bearer {other}"
        refused = client.post(f"/api/v1/jobs/{theirs['id']}/cancel")
        assert refused.status_code == 403 and "only their own" in refused.json()["detail"]
        assert client.post(f"/api/v1/jobs/{third['id']}/cancel").status_code == 403  # an admin's job too
    with service.client("data_scientist") as client:
        assert client.post(f"/api/v1/jobs/{mine['id']}/cancel").json()["status"] == "cancelled"
        assert client.post(f"/api/v1/jobs/{third['id']}/cancel").status_code == 403
    with service.client("commissioner") as client:
        assert client.post(f"/api/v1/jobs/{theirs['id']}/cancel").json()["status"] == "cancelled"
    with service.client("admin") as client:
        assert client.post(f"/api/v1/jobs/{third['id']}/cancel").json()["status"] == "cancelled"
    assert audit_actions(service, theirs["id"]) == [("job-submitted", "test data_scientist"),
                                                    ("job-cancelled", "test commissioner")]  # the refusals changed nothing


def test_a_running_job_is_cancelled_between_rounds(service, worker):
    seen: list[int] = []
    after_first, cancel_posted = threading.Event(), threading.Event()

    def hold_after_first(r: int) -> None:
        if r == 1:
            after_first.set()
            cancel_posted.wait(60)

    worker(scripted(seen, after_round=hold_after_first))
    job = submit(service, rounds=5)
    assert after_first.wait(60)
    with service.client("data_scientist") as client:
        asked = client.post(f"/api/v1/jobs/{job['id']}/cancel").json()
    assert asked["status"] == "running" and asked["cancel_requested_by"] == "test data_scientist"
    cancel_posted.set()
    done = wait_for(service, job["id"])
    assert done["status"] == "cancelled" and "between rounds" in done["reason"]
    assert seen == [1, 2] and done["rounds_done"] == 2 and len(done["history"]) == 2  # round 2 ran, then it stopped
    assert audit_actions(service, job["id"]) == [
        ("job-submitted", "test data_scientist"), ("job-started", "coordinator"),
        ("job-cancel-requested", "test data_scientist"), ("job-cancelled", "coordinator")]


def test_a_failed_job_names_the_sites_that_refused_and_why(service, worker):
    refused = [{"site": "clinic_b", "reason": "refused: the plan is not approved here", "phase": "stats"},
               {"site": "node 7", "reason": "no reply before the timeout", "phase": "stats"}]
    worker(scripted([], fail=JobFailed("stats (round 0): 1 usable reply, 3 needed", sites=refused,
                                       error="NotEnoughSitesError")))
    job = submit(service, rounds=1)
    done = wait_for(service, job["id"])
    assert done["status"] == "failed" and done["error"] == "NotEnoughSitesError"
    assert done["reason"].startswith("stats (round 0)") and done["failed_sites"] == refused
    actions = audit_actions(service, job["id"])
    assert actions[-1] == ("job-failed", "coordinator")
    with service.client("admin") as client:
        [entry] = [e for e in client.get("/api/v1/audit", params={"limit": 1000}).json()["entries"]
                   if e["action"] == "job-failed"]
    assert entry["details"]["failed_sites"] == refused and entry["details"]["rounds_done"] == 1


def test_a_runner_that_crashes_fails_the_job_and_the_worker_goes_on(service, worker):
    worker(scripted([], fail=RuntimeError("An error was encountered. Ending simulation.")))
    first = submit(service, rounds=1)
    second = submit(service, rounds=1)
    assert wait_for(service, first["id"])["error"] == "RuntimeError"
    done = wait_for(service, second["id"])
    assert done["status"] == "failed" and done["reason"] == "An error was encountered. Ending simulation."


def test_a_job_left_running_by_a_dead_coordinator_is_marked_failed_on_start(service):
    job = submit(service)
    dead = JobQueue(service.coordinator.sessions, service.coordinator.anchors)
    assert dead._claim().id == job["id"]  # it started, and then its process died
    assert wait_for(service, job["id"], lambda j: True)["status"] == "running"
    assert service.coordinator.jobs.start(None) == [job["id"]]
    done = wait_for(service, job["id"], lambda j: True)
    assert done["status"] == "failed" and done["reason"] == RESTARTED and done["finished_at"]
    assert audit_actions(service, job["id"])[-1] == ("job-failed", "coordinator")
    assert service.coordinator.jobs.start(None) == []  # nothing left running


def test_a_job_is_refused_for_an_unknown_task_or_a_bad_round_count(service):
    with service.client("data_scientist") as client:
        unknown = client.post("/api/v1/jobs", json={"task": "astrology", "rounds": 2})
        assert unknown.status_code == 404 and "triage" in unknown.json()["detail"]
        assert client.post("/api/v1/jobs", json={"task": TASK, "rounds": 0}).status_code == 422
        assert client.post("/api/v1/jobs", json={"task": TASK, "rounds": 2, "dp_epsilon": -1}).status_code == 422
        assert client.get("/api/v1/jobs/12345").status_code == 404
        assert client.get("/api/v1/jobs").json() == []


def test_the_job_lifecycle_on_postgresql(tmp_path, registry_file, postgres_url):  # noqa: F811
    """Claiming, progress, cancellation and restart recovery with PostgreSQL's row locks."""
    service = make_service(tmp_path / "home", registry_file, database_url=postgres_url)
    assert service.coordinator.sessions.kw["bind"].dialect.name == "postgresql"
    after_first, cancel_posted = threading.Event(), threading.Event()

    def hold(r: int) -> None:
        if r == 1:
            after_first.set()
            cancel_posted.wait(60)

    with running(create_app(service.coordinator)) as service.base_url:
        left_running = submit(service)
        claimed = JobQueue(service.coordinator.sessions)._claim()
        assert claimed.id == left_running["id"]
        claimed.on_engine_run(str(2**64 - 1))  # Flower's run ids are unsigned 64-bit: past PostgreSQL's BIGINT
        assert wait_for(service, left_running["id"], lambda j: True)["engine_run_id"] == str(2**64 - 1)
        queue = service.coordinator.jobs
        runner = scripted([], after_round=hold)
        assert queue.start(runner) == [left_running["id"]]
        try:
            cancelled = submit(service)
            assert after_first.wait(60)
            with service.client("admin") as client:
                client.post(f"/api/v1/jobs/{cancelled['id']}/cancel")
            cancel_posted.set()
            finished = submit(service, rounds=2)
            assert wait_for(service, cancelled["id"])["status"] == "cancelled"
            assert wait_for(service, finished["id"])["status"] == "succeeded"
        finally:
            queue.stop(timeout=60)
        # The scripted runner cannot stop an engine's run: the reason says so
        assert wait_for(service, left_running["id"], lambda j: True)["reason"] == \
            f"{RESTARTED}; engine run {2**64 - 1}: not stopped (jobs now run on {runner}); stop it by hand"
        assert wait_for(service, finished["id"], lambda j: True)["rounds_done"] == 2
        assert audit_actions(service, finished["id"])[-1] == ("job-succeeded", "coordinator")
