"""The coordinator service with the deployment engine's runner (``fenji.deployment_jobs``) over the
scripted ``flwr`` CLI of tests/fenji/test_deployment_jobs.py: a job's Flower run id is stored as soon
as ``flwr run`` prints it, a coordinator that restarts mid-job stops that run on the SuperLink (and
says so in the job's reason and its audit entry), and a job asking for ``dp_epsilon`` is refused with
422 on this engine, where each site's own DP policy applies."""

from __future__ import annotations

import pytest

from coordinator.service import create_app
from coordinator.service.jobs import RESTARTED, JobQueue
from tests.coordinator.service.conftest import TASK, make_service, registry_file  # noqa: F401  (a fixture)
from tests.coordinator.service.test_jobs import wait_for
from tests.fenji.test_deployment_jobs import ROUND_1, RUN_ID, flwr  # noqa: F401  (a fixture)
from tests.servers import running


class _Died(BaseException):
    """The coordinator's process dying mid-job: nothing of the runner's own clean-up catches it."""


@pytest.fixture()
def service(tmp_path, registry_file):  # noqa: F811
    service = make_service(tmp_path / "home", registry_file)
    with running(create_app(service.coordinator)) as service.base_url:
        yield service
    service.coordinator.jobs.stop(timeout=60)


def _left_running_by_a_dead_coordinator(service, runner) -> dict:
    """A job whose coordinator died during round 1 of its Flower run: the run goes on at the SuperLink."""
    with service.client("data_scientist") as client:
        job = client.post("/api/v1/jobs", json={"task": TASK, "rounds": 2}).json()
    dead = JobQueue(service.coordinator.sessions)
    dead.runner = runner
    request = dead._claim()

    def die(server_round, metrics):
        raise _Died()

    with pytest.raises(_Died):
        runner(request, die)
    return wait_for(service, job["id"], lambda j: True)


def _last_entry(service, job_id: int) -> dict:
    with service.client("admin") as client:
        entries = client.get("/api/v1/audit", params={"limit": 1000}).json()["entries"]
        assert client.get("/api/v1/audit/verify").json()["ok"]
    return [e for e in entries if e["details"].get("job_id") == job_id][-1]


@pytest.mark.parametrize("stop_fails", [False, True])
def test_a_restarted_coordinator_stops_the_flower_run_its_job_left_going(service, flwr, stop_fails):  # noqa: F811
    runner, scenario = flwr
    scenario([ROUND_1], statuses=["running"], stop_fails=stop_fails)
    job = _left_running_by_a_dead_coordinator(service, runner)
    assert (job["status"], job["engine_run_id"]) == ("running", str(RUN_ID))
    assert not any(call[0] == "stop" for call in runner.calls())  # the dead process stopped nothing

    assert service.coordinator.jobs.start(runner) == [job["id"]]
    done = wait_for(service, job["id"], lambda j: True)
    assert ["stop", str(RUN_ID), "city-superlink", "--format", "json"] in runner.calls()
    assert done["status"] == "failed" and done["error"] == "CoordinatorRestarted"
    assert done["reason"].startswith(f"{RESTARTED}; Flower run {RUN_ID}: ")
    entry = _last_entry(service, job["id"])
    assert entry["action"] == "job-failed" and entry["details"]["engine_run_id"] == str(RUN_ID)
    if stop_fails:
        assert "did not confirm it stopped" in done["reason"] and "couldn't be stopped" in done["reason"]
    else:
        assert done["reason"].endswith("stopped on city-superlink (flwr stop)")
    assert entry["details"]["engine_run_stop"] in done["reason"]


def test_a_restart_without_the_deployment_engine_says_the_run_was_not_stopped(service, flwr):  # noqa: F811
    runner, scenario = flwr
    scenario([ROUND_1], statuses=["running"])
    job = _left_running_by_a_dead_coordinator(service, runner)
    assert service.coordinator.jobs.start(None) == [job["id"]]
    done = wait_for(service, job["id"], lambda j: True)
    assert done["reason"].endswith("not stopped (no training engine is configured now); stop it by hand")
    assert not any(call[0] == "stop" for call in runner.calls())


def test_dp_epsilon_is_refused_on_the_deployment_engine_and_accepted_without(service, flwr):  # noqa: F811
    runner, _ = flwr
    service.coordinator.jobs.runner = runner  # the engine the service was started with; no worker runs here
    with service.client("data_scientist") as client:
        refused = client.post("/api/v1/jobs", json={"task": TASK, "rounds": 2, "dp_epsilon": 1.5})
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"] == "Unprocessable"
        assert "own DP policy" in refused.json()["detail"] and "without dp_epsilon" in refused.json()["detail"]
        assert client.get("/api/v1/jobs").json() == []  # nothing queued, nothing audited as submitted
        accepted = client.post("/api/v1/jobs", json={"task": TASK, "rounds": 2})
        assert accepted.status_code == 201 and accepted.json()["dp_epsilon"] is None
