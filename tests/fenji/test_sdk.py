"""The data scientists' SDK (``fenji_sdk``) against a real coordinator on uvicorn, whose worker runs
statistics queries and training jobs on Flower's real simulation engine over four small synthetic
clinics (``fenji.jobs_runner``): what the sites answer comes back as DataFrames, every refusal as the
SDK error of its status with the server's message, and every query is in the audit trail."""

from __future__ import annotations

import shutil

import pytest

import fenji_sdk
from coordinator.service import create_app
from fenji.jobs_runner import SimulationRunner
from fenji_sdk import Client, Count, Histogram
from node_agent.budget import node_audit
from node_agent.store import SiteStore
from tests.coordinator.service.conftest import make_service, registry_file  # noqa: F401  (a fixture)
from tests.servers import running

TASK = "referral_risk"
EDGES = (0.0, 20.0, 40.0, 60.0, 80.0, 120.0)


@pytest.fixture(scope="module")
def sdk_service(tmp_path_factory, small_federation, registry_file):  # noqa: F811
    root = tmp_path_factory.mktemp("sdk")
    for site in small_federation:
        shutil.copytree(site, root / "sites" / site.name)
    service = make_service(root / "home", registry_file)
    service.sites = root / "sites"
    runner = SimulationRunner(root / "sites", keyholder_home=root / "keyholder",
                              tracking_uri=service.coordinator.registry.tracking_uri)
    service.coordinator.jobs.start(runner)
    with running(create_app(service.coordinator)) as service.base_url:
        yield service
    service.coordinator.jobs.stop(timeout=120)


def _client(service, who: str = "data_scientist") -> Client:
    return Client(service.base_url, service.tokens[who])


def test_the_public_api_is_listed():
    assert sorted(fenji_sdk.__all__) == sorted(n for n in dir(fenji_sdk) if not n.startswith("_")
                                               and n not in {"annotations", "client", "errors", "progress"})


def test_a_count_and_a_histogram_come_back_as_frames_with_their_suppressed_cells(sdk_service, referral_spec):
    pooled = 0
    for site in sorted(sdk_service.sites.iterdir()):
        with SiteStore(site, read_only=True) as store:
            pooled += len(store.load(referral_spec))
    with _client(sdk_service) as fenji:
        total = fenji.query(Count(), task=TASK)
        histogram = fenji.query(Histogram(column="age", edges=EDGES), task=TASK)
    assert total.to_frame()["count"].tolist() == [pooled] and total.rows == pooled
    assert total.sites == sorted(p.name for p in sdk_service.sites.iterdir())
    frame = histogram.to_frame()
    assert list(frame.columns) == ["bin_left", "bin_right", "count", "suppressed_sites"]
    assert len(frame) == len(EDGES)  # the bins, then the rows outside them
    assert frame["suppressed_sites"].between(0, 4).all()
    # A suppressed cell leaves its small sites out: the released counts add up to at most the rows.
    assert frame["count"].sum() <= pooled
    assert (frame["count"].sum() == pooled) == histogram.suppressed.empty
    with _client(sdk_service, "admin") as admin:
        trail = admin.audit(limit=1000)
    actions = trail[trail["action"].str.startswith("query-")]
    assert actions["action"].tolist() == ["query-submitted", "query-started", "query-succeeded"] * 2
    assert actions["actor"].tolist()[0] == "test data_scientist"


def test_a_training_job_is_submitted_followed_and_read_back(sdk_service, capsys):
    with _client(sdk_service) as fenji:
        job = fenji.submit_training(TASK, 2)
        done = fenji.wait(job["id"], poll=0.2)
        assert done["status"] == "succeeded" and done["rounds_done"] == 2
        assert "2/2 succeeded" in capsys.readouterr().err
        assert TASK in fenji.tasks()
        version = done["result"]["version"]
        versions = fenji.versions(TASK)
        mine = versions[versions["version"] == version]
        assert sorted(mine["site"]) == sorted(p.name for p in sdk_service.sites.iterdir())
        assert mine["auroc"].between(0, 1).all()
        rounds = fenji.rounds(TASK, version)
        assert list(rounds.index) == [1, 2]


def test_refusals_raise_the_sdk_error_of_their_status_with_the_servers_message(sdk_service):
    with Client(sdk_service.base_url, "fco_not-a-token") as stranger, pytest.raises(fenji_sdk.NotAuthenticated,
                                                                                    match="unknown or revoked"):
        stranger.tasks()
    with _client(sdk_service, "commissioner") as commissioner, pytest.raises(fenji_sdk.Forbidden,
                                                                            match="data_scientist") as refused:
        commissioner.query(Count(), task=TASK)
    assert refused.value.status == 403
    with _client(sdk_service) as fenji:
        with pytest.raises(fenji_sdk.NotFound, match="no job 999999"):
            fenji.job(999999)
        with pytest.raises(fenji_sdk.Invalid, match="numeric") as invalid:  # age is numeric: it groups nothing
            fenji.query(Count(group_by="age"), task=TASK)
        assert invalid.value.error == "QueryError"
        with pytest.raises(fenji_sdk.Invalid, match="rounds"):
            fenji.submit_training(TASK, 0)
        with pytest.raises(fenji_sdk.NotFound, match="no built-in task"):
            fenji.submit_training("no_such_task", 1)


def test_after_a_run_the_sites_come_back_as_a_frame_with_each_nodes_report(sdk_service, referral_spec):
    with _client(sdk_service) as fenji:
        done = fenji.wait(fenji.submit_training(TASK, 1)["id"], progress=False, poll=0.2)
        sites = fenji.sites().set_index("site")
    folders = sorted(sdk_service.sites.iterdir())
    assert list(sites.index) == [p.name for p in folders]
    for folder in folders:
        with SiteStore(folder, read_only=True) as store:
            rows = store.count(referral_spec)
        site = sites.loc[folder.name]
        assert site["rows_low"] <= rows < site["rows_high"] and site["task"] == TASK  # a bucket, not the count
        assert site["last_job"] == done["id"] and site["last_seen"] >= done["started_at"][:19]
        assert site["audit_head"] == node_audit(folder).head()  # the node's log as of its last reply
        assert site["plans_approved"] >= 1 and site["runs_accepted"] >= 1 and site["runs_refused"] == 0
        assert (site["budget_spent"], site["budget_left"]) == (0.0, site["budget_total"])  # no DP asked or set
    # A data scientist does not see the decision-quality review (the commission's), and is told so.
    assert (sites["withheld"] == "quality").all() and not any(c.startswith("quality_") for c in sites.columns)


def test_a_data_scientist_follows_approvals_and_checks_the_audit_chain(sdk_service):
    import httpx

    approval = httpx.post(f"{sdk_service.base_url}/api/v1/models/triage/versions/1/approve", timeout=60,
                          json={"reason": "better at every clinic"}, headers=sdk_service.headers("commissioner"))
    assert approval.status_code == 200, approval.text
    with _client(sdk_service) as fenji:
        promotions = fenji.promotions()
        verdict = fenji.verify_audit()
        with pytest.raises(fenji_sdk.Forbidden):
            fenji.audit()  # the entries are the commission's and the admins'; the verdict is everyone's
    pending = promotions[promotions["status"] == "pending"]
    assert pending[["task", "version", "approved_by", "reasons"]].values.tolist() == [
        ["triage", "1", "test commissioner", "better at every clinic"]]
    assert verdict["ok"] and verdict["entries"] >= 3


@pytest.fixture()
def bare_service(tmp_path, registry_file):  # noqa: F811
    """A coordinator whose runner trains but answers no queries (a plain function)."""
    service = make_service(tmp_path / "home", registry_file)
    service.coordinator.jobs.start(lambda request, on_round: pytest.fail("no job is submitted here"))
    with running(create_app(service.coordinator)) as service.base_url:
        yield service
    service.coordinator.jobs.stop(timeout=60)


def test_a_query_the_runner_cannot_answer_fails_by_name_and_is_audited(bare_service):
    with _client(bare_service) as fenji, pytest.raises(fenji_sdk.JobFailed, match="does not answer queries") as failed:
        fenji.query(Count(), task=TASK, poll=0.05, timeout=120)
    assert failed.value.record["error"] == "NotImplementedError" and failed.value.record["result"] is None
    with _client(bare_service, "admin") as admin:
        trail = admin.audit(limit=1000)
    assert trail[trail["action"].str.startswith("query-")]["action"].tolist() == [
        "query-submitted", "query-started", "query-failed"]


def test_a_query_left_running_by_a_dead_coordinator_is_marked_failed_on_restart(tmp_path, registry_file):  # noqa: F811
    from coordinator.service.db import QueryJob
    from coordinator.service.jobs import RESTARTED

    service = make_service(tmp_path / "home", registry_file)
    with service.coordinator.sessions() as session:
        session.add(QueryJob(task=TASK, query_json='{"kind":"count"}', status="running", submitted_by="x",
                             submitted_at="2026-01-01T00:00:00Z"))
        session.commit()
    service.coordinator.jobs.recover()
    with running(create_app(service.coordinator)) as service.base_url, _client(service) as fenji:
        record = fenji.query_status(1)
    assert (record["status"], record["reason"]) == ("failed", RESTARTED)


@pytest.fixture()
def queue_only(tmp_path, registry_file):  # noqa: F811
    """A coordinator with no engine: what is submitted stays queued (nothing runs it)."""
    from coordinator.service import Role
    from coordinator.service.accounts import add_account

    service = make_service(tmp_path / "home", registry_file)
    with service.coordinator.sessions() as session:
        service.tokens["other"] = add_account(session, name="other scientist", role=Role.DATA_SCIENTIST,
                                              actor="test")[1]
    with running(create_app(service.coordinator)) as service.base_url:
        yield service


def test_queries_are_listed_as_a_frame_and_a_queued_one_is_cancelled(queue_only):
    with _client(queue_only) as fenji, _client(queue_only, "other") as other:
        first = fenji.submit_query(Count(), task=TASK)
        second = other.submit_query(Histogram(column="age", edges=EDGES), task=TASK)
        frame = fenji.queries()
        assert frame[["id", "kind", "status", "submitted_by"]].values.tolist() == [
            [second["id"], "histogram", "queued", "other scientist"], [first["id"], "count", "queued", "test data_scientist"]]
        assert frame.iloc[0]["query"]["edges"] == list(EDGES)
        with pytest.raises(fenji_sdk.Forbidden, match="cancels only their own queries"):
            fenji.cancel_query(second["id"])
        cancelled = fenji.cancel_query(first["id"])
        assert cancelled["status"] == "cancelled" and "cancelled by test data_scientist" in cancelled["reason"]
        with pytest.raises(fenji_sdk.Conflict, match="cancelled already"):
            fenji.cancel_query(first["id"])
        assert fenji.queries(limit=5)["status"].tolist() == ["queued", "cancelled"]
        assert fenji.queries(limit=1)["id"].tolist() == [second["id"]]
    with _client(queue_only, "admin") as admin:
        assert admin.cancel_query(second["id"])["status"] == "cancelled"
        trail = admin.audit(limit=1000)
    assert trail[trail["action"] == "query-cancelled"][["query_id", "actor"]].values.tolist() == [
        [first["id"], "test data_scientist"], [second["id"], "admin"]]


def test_a_query_waited_for_and_cancelled_meanwhile_ends_the_wait_by_saying_so(queue_only):
    import threading
    import time

    outcome: list[BaseException] = []

    def ask() -> None:
        with _client(queue_only) as fenji:
            try:
                fenji.query(Count(), task=TASK, poll=0.05, timeout=120)
            except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
                outcome.append(exc)

    waiting = threading.Thread(target=ask)
    waiting.start()
    with _client(queue_only) as fenji:
        while fenji.queries().empty and waiting.is_alive():
            time.sleep(0.02)  # until the other thread's query is queued
        fenji.cancel_query(int(fenji.queries()["id"].iloc[0]))
    waiting.join(120)
    (failed,) = outcome
    assert isinstance(failed, fenji_sdk.JobFailed) and "was cancelled: cancelled by test data_scientist" in str(failed)
    assert failed.record["status"] == "cancelled"


def test_a_job_a_query_and_a_surveillance_run_are_waited_for_alike(capsys):
    """``wait``, ``query`` and ``surveillance`` share one poll loop: each follows its record to its end,
    says which record timed out, and raises ``JobFailed`` with the server's reason (a job's with the sites
    that refused); a cancelled job is an end, not a failure. A scripted transport stands in for the
    server: each path answers its next record, the last one again and again."""
    import httpx

    def job(job_id: int, status: str, **extra) -> dict:
        return {"id": job_id, "status": status, "rounds_done": 1, "rounds": 2, **extra}

    script = {
        "/api/v1/jobs/7": [job(7, "queued"), job(7, "running"),
                           job(7, "failed", reason="quorum lost",
                               failed_sites=[{"site": "clinic_b", "reason": "refused"}])],
        "/api/v1/jobs/8": [job(8, "running")],
        "/api/v1/jobs/9": [job(9, "running"), job(9, "cancelled", reason="cancelled by admin")],
        "/api/v1/queries": [{"id": 3, "status": "queued"}],
        "/api/v1/queries/3": [{"id": 3, "status": "running"}, {"id": 3, "status": "failed", "reason": "too few sites"}],
        "/api/v1/surveillance": [{"id": 4, "status": "queued"}, {"id": 5, "status": "queued"}],
        "/api/v1/surveillance/4": [{"id": 4, "status": "failed", "reason": "no district could be summed"}],
        "/api/v1/surveillance/5": [{"id": 5, "status": "running"}],
    }

    def answer(request: httpx.Request) -> httpx.Response:
        left = script[request.url.path]
        return httpx.Response(201 if request.method == "POST" else 200, json=left.pop(0) if len(left) > 1 else left[0])

    with Client("http://fenji.test", "fco_scripted", transport=httpx.MockTransport(answer)) as fenji:
        refused = r"^job 7 failed: quorum lost; sites: clinic_b \(refused\)$"
        with pytest.raises(fenji_sdk.JobFailed, match=refused) as failed:
            fenji.wait(7, poll=0)
        assert failed.value.record["status"] == "failed"
        bar = "#" * 12 + "." * 12  # round 1 of 2
        shown = "".join(f"\rjob 7 [{bar}] 1/2 {status}" for status in ("queued", "running", "failed"))
        assert capsys.readouterr().err == shown + "\n"
        with pytest.raises(fenji_sdk.WaitTimeout, match=r"^job 8 is still running after 0.05 s$"):
            fenji.wait(8, progress=False, poll=0.01, timeout=0.05)
        assert fenji.wait(9, progress=False, poll=0)["reason"] == "cancelled by admin"
        with pytest.raises(fenji_sdk.JobFailed, match=r"^query 3 failed: too few sites$"):
            fenji.query(Count(), task=TASK, poll=0)
        with pytest.raises(fenji_sdk.JobFailed, match=r"^surveillance run 4 failed: no district could be summed$"):
            fenji.surveillance(TASK, "2025-09-01", "2025-09-28", poll=0)
        with pytest.raises(fenji_sdk.WaitTimeout, match=r"^surveillance run 5 is still running after 0.05 s$"):
            fenji.surveillance(TASK, "2025-09-01", "2025-09-28", poll=0.01, timeout=0.05)
    assert capsys.readouterr().err == ""
