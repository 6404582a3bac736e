"""The coordinator's training jobs on Flower's real simulation engine (``fenji.jobs_runner``): a job
submitted through the API runs encrypted FedAvg over small synthetic sites, round by round, and is
registered; a cancelled job stops between rounds; sites that refuse the plan fail the job by name;
and a coordinator killed mid-job (a real `fenji coordinator serve` process, SIGKILL) marks the job
failed when it starts again."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from coordinator.service import create_app, open_coordinator
from coordinator.service.accounts import bootstrap_admin
from coordinator.service.jobs import RESTARTED
from coordinator.settings import load_coordinator_settings
from fenji.jobs_runner import SimulationRunner, left_out_sites
from node_agent.policy import load_site_policy, save_site_policy
from simulation.engine import approve_at_sites
from tests.coordinator.service.conftest import make_service, registry_file  # noqa: F401  (a fixture)
from tests.coordinator.service.test_jobs import wait_for
from tests.servers import running

TASK = "referral_risk"


@pytest.fixture()
def sites(tmp_path, small_federation) -> Path:
    """A copy of the four small synthetic clinics: a test may change their policies."""
    root = tmp_path / "sites"
    for site in small_federation:
        shutil.copytree(site, root / site.name)
    return root


@pytest.fixture()
def service(tmp_path, registry_file):  # noqa: F811
    service = make_service(tmp_path / "home", registry_file)
    with running(create_app(service.coordinator)) as service.base_url:
        yield service
    service.coordinator.jobs.stop(timeout=120)


def _runner(service, sites: Path, tmp_path: Path, **kwargs) -> SimulationRunner:
    return SimulationRunner(sites, keyholder_home=tmp_path / "keyholder",
                            tracking_uri=service.coordinator.registry.tracking_uri, **kwargs)


def _submit(service, **body) -> dict:
    with service.client("data_scientist") as client:
        response = client.post("/api/v1/jobs", json={"task": TASK, "rounds": 2} | body)
    assert response.status_code == 201, response.text
    return response.json()


def test_a_submitted_job_trains_round_by_round_and_registers_the_model(service, sites, tmp_path):
    service.coordinator.jobs.start(_runner(service, sites, tmp_path))
    job = _submit(service)
    done = wait_for(service, job["id"], deadline=900)
    assert done["status"] == "succeeded", done
    assert done["rounds_done"] == 2 and done["progress"] == 1.0
    assert [r["round"] for r in done["history"]] == [1.0, 2.0]
    assert all(0.5 < r["auroc"] <= 1.0 for r in done["history"])  # each round's metrics, over the sites
    result = done["result"]
    assert sorted(result["sites"]) == sorted(p.name for p in sites.iterdir())
    assert result["excluded"] == [] and result["encrypted"] is True
    assert sorted(result["personalisation"]) == sorted(result["sites"])
    with service.client("commissioner") as client:  # the version the commissioners now compare
        [version] = client.get(f"/api/v1/models/{TASK}/versions").json()
    assert (result["model"], result["version"]) == (f"fenji-{TASK}", version["version"])
    assert sorted(version["sites"]) == sorted(result["sites"])


def test_a_cancelled_job_stops_after_the_round_it_is_in(service, sites, tmp_path):
    real = SimulationRunner(sites, keyholder_home=tmp_path / "keyholder")  # a cancelled job registers nothing
    after_first, cancel_posted = threading.Event(), threading.Event()

    def runner(request, on_round):
        def hold_after_first(server_round, metrics):
            if server_round == 1:
                after_first.set()
                cancel_posted.wait(300)
            on_round(server_round, metrics)

        return real(request, hold_after_first)

    service.coordinator.jobs.start(runner)
    job = _submit(service, rounds=3)
    assert after_first.wait(900)
    with service.client("data_scientist") as client:
        assert client.post(f"/api/v1/jobs/{job['id']}/cancel").json()["cancel_requested_by"]
    cancel_posted.set()
    done = wait_for(service, job["id"], deadline=900)
    assert done["status"] == "cancelled", done
    assert done["rounds_done"] == 1 and len(done["history"]) == 1 and done["result"] is None


def test_sites_that_refuse_the_plan_fail_the_job_by_name(service, sites, tmp_path, referral_spec):
    from node_agent.policy import plan_digest

    folders = sorted(sites.iterdir())
    approve_at_sites(folders[:2], referral_spec, rounds=2)
    for folder in folders[2:]:  # these two sites' admins never approved the plan
        policy = load_site_policy(folder)
        policy.approved_plans.pop(plan_digest(referral_spec), None)
        save_site_policy(folder, policy)
    service.coordinator.jobs.start(_runner(service, sites, tmp_path, approve=False))
    done = wait_for(service, _submit(service)["id"], deadline=900)
    assert done["status"] == "failed" and done["error"] == "NotEnoughSitesError", done
    assert done["rounds_done"] == 0
    assert {s["site"] for s in done["failed_sites"]} == {f.name for f in folders[2:]}
    assert all(s["phase"] == "stats" and "approved" in s["reason"] for s in done["failed_sites"]), done


def test_queries_are_audited_in_the_coordinators_log_with_the_sites_heads_and_the_sites_left_out(sites, tmp_path):
    """As on the deployment engine (tests/fenji/test_deployment_app.py): an answer carries the sites' audit
    heads and is audited ``analytics-query``; a failure names each site left out, audited too."""
    from coordinator.audit import AuditLog
    from coordinator.service.errors import JobFailed
    from coordinator.service.queries import QueryRequest
    from federation.analytics import Count, Mean

    log = tmp_path / "coordinator-audit.jsonl"
    runner = SimulationRunner(sites, keyholder_home=tmp_path / "keyholder", audit_log=log)
    answer = runner.run_query(QueryRequest(id=1, task=TASK, query=Count()))
    names = sorted(p.name for p in sites.iterdir())
    assert sorted(answer["site_audit_heads"]) == names and all(answer["site_audit_heads"].values())
    # The sites allow counts only now: a mean is declined by each, and nothing is approved on their behalf.
    runner.approve = False
    with pytest.raises(JobFailed, match="min-sites") as failed:
        runner.run_query(QueryRequest(id=2, task=TASK, query=Mean(column="age")))
    assert failed.value.error == "NotEnoughSitesError"
    assert sorted((s["site"], s["phase"]) for s in failed.value.sites) == [(n, "analytics") for n in names]
    entries = [e for e in AuditLog(log).entries() if e["action"].startswith("analytics-query")]
    assert [e["action"] for e in entries] == ["analytics-query", "analytics-query-failed"]
    assert entries[0]["details"]["site_audit_heads"] == answer["site_audit_heads"]
    assert entries[1]["details"]["excluded"] == failed.value.sites and entries[1]["details"]["engine"] == "simulation"


def test_left_out_sites_are_read_from_the_message():
    message = ("train (round 2): 1 usable repl(ies), at least 3 (min-sites) needed. Left out: site_b: refused: "
               "no; really: not approved; node 17: no reply before the timeout")
    assert left_out_sites(message, ["site_a", "site_b"]) == [
        {"site": "site_b", "reason": "refused: no; really: not approved", "phase": "train"},
        {"site": "node 17", "reason": "no reply before the timeout", "phase": "train"}]
    assert left_out_sites("stats (round 0): 0 usable repl(ies), at least 3 (min-sites) needed. Left out: none",
                          ["site_a"]) == []
    assert left_out_sites("a decrypted aggregate from another key", ["site_a"]) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    """`fenji coordinator serve` in a session of its own: SIGKILL to the group takes Ray and the key
    holder it started along (they share its process group)."""
    out = log.open("ab")
    fenji = str(Path(sys.executable).with_name("fenji"))
    process = subprocess.Popen([fenji, "coordinator", "serve", "--port", str(port)],
                               env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    end = time.monotonic() + 120
    while time.monotonic() < end and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    _kill(process)
    raise AssertionError(f"the coordinator did not start: {log.read_text()[-3000:]}")


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


@pytest.mark.skipif(sys.platform != "linux", reason="process groups and SIGKILL as on Linux")
def test_a_coordinator_killed_mid_job_marks_the_job_failed_when_it_starts_again(sites, tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FENJI_")}
    env |= {"FENJI_HOME": str(home), "FENJI_SITES_DIR": str(sites), "PYTHONUNBUFFERED": "1"}
    admin = bootstrap_admin(open_coordinator(load_coordinator_settings(home=home)).sessions)
    port, log = _free_port(), tmp_path / "serve.log"
    headers = {"Authorization": f"Bearer {admin}"}
    base = f"http://127.0.0.1:{port}/api/v1"
    process = _serve(env, port, log)
    try:
        job = httpx.post(f"{base}/jobs", json={"task": TASK, "rounds": 50}, headers=headers, timeout=60).json()
        end = time.monotonic() + 900
        while time.monotonic() < end:  # mid-job: after its first round, long before its last
            seen = httpx.get(f"{base}/jobs/{job['id']}", headers=headers, timeout=60).json()
            if seen["rounds_done"] >= 1 or seen["status"] != "queued" and seen["status"] != "running":
                break
            time.sleep(0.5)
        assert seen["status"] == "running" and 1 <= seen["rounds_done"] < 50, (seen, log.read_text()[-3000:])
    finally:
        _kill(process)
    process = _serve(env, port, log)
    try:
        after = httpx.get(f"{base}/jobs/{job['id']}", headers=headers, timeout=60).json()
        assert after["status"] == "failed" and after["reason"] == RESTARTED, after
        assert after["rounds_done"] >= 1 and len(after["history"]) == after["rounds_done"]
        assert httpx.get(f"{base}/audit/verify", headers=headers, timeout=60).json()["ok"]
        trail = httpx.get(f"{base}/audit", params={"limit": 1000}, headers=headers, timeout=60).json()["entries"]
        assert [e["action"] for e in trail if e["details"].get("job_id") == job["id"]] == [
            "job-submitted", "job-started", "job-failed"]
    finally:
        _kill(process)
    assert f"job {job['id']} was running when the coordinator stopped" in log.read_text()
