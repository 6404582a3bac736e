"""The deployment engine's job runner (``fenji.deployment_jobs``) against a scripted ``flwr`` CLI: what
it reads from a run's log (rounds, result, failure with the sites), that a cancelled job is stopped
with ``flwr stop``, that a cut log stream is followed again with ``flwr log``, and a run that failed
before it could report. The scripted CLI prints what Flower 1.41's ``flwr run --stream``, ``flwr log``
and ``flwr ls --format json`` print; the real CLI, SuperLink and SuperNodes run the same runner in
tests/fenji/test_deployment_faults.py (minutes per run: too slow for every path here)."""

from __future__ import annotations

import json
import sys

import pytest

from coordinator.service.errors import JobCancelled, JobFailed
from coordinator.service.jobs import JobRequest
from fenji.deployment import EVENT_PREFIX
from fenji.deployment_jobs import DeploymentRunner, run_config_of

RUN_ID = 4242
FLWR = '''
import json, pathlib, sys
here = pathlib.Path(__file__).parent
scenario = json.loads((here / "scenario.json").read_text())
with open(here / "calls.log", "a") as calls:
    calls.write(json.dumps(sys.argv[1:]) + "\\n")
command = sys.argv[1]
if command == "run":
    print("Loading project configuration...")
    print("Successfully started run %d" % scenario["run_id"])
    for line in scenario["stream"]:
        print(line, flush=True)
elif command == "log":
    for line in scenario["log"]:
        print(line, flush=True)
elif command == "ls":
    statuses = scenario["statuses"]
    status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
    scenario["statuses"] = statuses
    (here / "scenario.json").write_text(json.dumps(scenario))
    print(json.dumps({"success": True, "runs": [{"run-id": scenario["run_id"], "status": status,
                                                 "status-details": scenario.get("details", "")}]}))
elif command == "stop" and "--format" in sys.argv:
    if scenario.get("stop_fails"):
        print(json.dumps({"success": False, "error-message": "Run %s couldn't be stopped." % sys.argv[2]}))
        sys.exit(1)
    print(json.dumps({"success": True, "run-id": sys.argv[2]}))
'''


def _event(event: str, **payload) -> str:
    return "\x1b[92mINFO \x1b[0m:      " + EVENT_PREFIX + json.dumps({"event": event, **payload})


ROUND_1 = _event("round", round=1, metrics={"round": 1.0, "auroc": 0.71})
ROUND_2 = _event("round", round=2, metrics={"round": 2.0, "auroc": 0.74})
RESULT = _event("result", sites={"clinic_a": {"auroc": 0.75}, "clinic_b": {"auroc": 0.72}},
                excluded=[{"round": 0, "phase": "stats", "node": 9, "reason": "error reply: Node Unavailable",
                           "site": "clinic_d"}], model="fenji-referral_risk", version="3", encrypted=True,
                seconds=12.5, calibration="platt", train_rows={"clinic_a": 160}, personalisation={},
                site_audit_heads={"clinic_a": "ab" * 32}, site_reports={}, last_seen={"clinic_a": "2025-01-01T00:00:00"})
FAILED = _event("failed", error="NotEnoughSitesError",
                reason="train (round 1): 2 usable repl(ies), at least 3 (min-sites) needed. Left out: clinic_c: ...",
                excluded=[{"round": 1, "phase": "train", "node": 7, "reason": "error reply: Node Unavailable",
                           "site": "clinic_c"}])


@pytest.fixture()
def flwr(tmp_path):
    """``(runner, scenario)``: a runner whose ``flwr`` is the scripted CLI; ``scenario(...)`` sets what it prints."""
    script = tmp_path / "flwr"
    script.write_text(f"#!{sys.executable}\n{FLWR}")
    script.chmod(0o755)

    def scenario(stream, *, statuses=("finished:completed",), log=(), details="", stop_fails=False):
        (tmp_path / "scenario.json").write_text(json.dumps({"run_id": RUN_ID, "stream": list(stream),
                                                            "statuses": list(statuses), "log": list(log),
                                                            "details": details, "stop_fails": stop_fails}))

    runner = DeploymentRunner(tmp_path / "app", "city-superlink", flwr=str(script))
    runner.calls = lambda: [json.loads(line) for line in (tmp_path / "calls.log").read_text().splitlines()]
    return runner, scenario


def _request(**kwargs) -> JobRequest:
    return JobRequest(id=1, task="referral_risk", rounds=2, **kwargs)


def test_a_run_reports_each_round_then_its_result(flwr):
    runner, scenario = flwr
    scenario(["[ROUND 1/2]", ROUND_1, "[ROUND 2/2]", ROUND_2, RESULT])
    rounds = []
    result = runner(_request(personalisation=False), lambda r, m: rounds.append((r, m)))
    assert rounds == [(1, {"round": 1.0, "auroc": 0.71}), (2, {"round": 2.0, "auroc": 0.74})]
    assert (result.model, result.version, sorted(result.sites)) == ("fenji-referral_risk", "3", ["clinic_a", "clinic_b"])
    assert result.excluded == [{"site": "clinic_d", "reason": "error reply: Node Unavailable", "phase": "stats",
                                "round": 0}]
    assert result.details["engine"] == "deployment" and result.details["flower_run_id"] == RUN_ID
    assert "personalisation" not in result.details  # the job did not ask for it
    assert result.sightings["clinic_a"].last_seen == "2025-01-01T00:00:00"
    run = runner.calls()[0]
    assert run[:3] == ["run", str(runner.app), "city-superlink"] and run[-1] == "--stream"
    assert run[run.index("--run-config") + 1] == run_config_of(_request(personalisation=False)) \
        == 'task="referral_risk" num-server-rounds=2 personalisation=false'


def test_a_failed_run_fails_the_job_naming_the_sites_left_out(flwr):
    runner, scenario = flwr
    scenario(["[ROUND 1/2]", FAILED], statuses=["finished:failed"])
    with pytest.raises(JobFailed) as failed:
        runner(_request(), lambda r, m: None)
    assert failed.value.error == "NotEnoughSitesError" and "min-sites" in str(failed.value)
    assert failed.value.sites == [{"site": "clinic_c", "reason": "error reply: Node Unavailable", "phase": "train",
                                   "round": 1}]


def test_a_run_that_failed_before_it_could_report_says_what_flower_said(flwr):
    runner, scenario = flwr
    scenario([], statuses=["finished:failed"], details="ServerApp failed with exception: no module named torch")
    with pytest.raises(JobFailed, match="ended finished:failed: ServerApp failed with exception: no module"):
        runner(_request(), lambda r, m: None)


def test_a_cancelled_job_stops_the_run_on_the_superlink(flwr):
    runner, scenario = flwr
    scenario([ROUND_1, ROUND_2, RESULT], statuses=["running"])

    def on_round(server_round, metrics):
        raise JobCancelled("job 1 cancelled by a data scientist after round 1")

    with pytest.raises(JobCancelled):
        runner(_request(), on_round)
    assert ["stop", str(RUN_ID), "city-superlink"] in runner.calls()


def test_a_cut_log_stream_is_followed_again_and_each_round_counted_once(flwr):
    runner, scenario = flwr
    scenario([ROUND_1], statuses=["running", "finished:completed"], log=[ROUND_1, ROUND_2, RESULT])
    rounds = []
    result = runner(_request(), lambda r, m: rounds.append(r))
    assert rounds == [1, 2] and result.version == "3"
    assert ["log", str(RUN_ID), "city-superlink", "--stream"] in runner.calls()


def test_a_run_that_never_started_fails_the_job(flwr, tmp_path):
    runner, scenario = flwr
    scenario([])
    (tmp_path / "flwr").write_text(f"#!{sys.executable}\nprint('Connection to the SuperLink is unavailable')\n")
    with pytest.raises(JobFailed, match="did not start the job on city-superlink: Connection to the SuperLink"):
        runner(_request(), lambda r, m: None)


def test_the_deployment_engine_is_chosen_by_a_superlink_setting(tmp_path, monkeypatch):
    from coordinator.settings import load_coordinator_settings
    from federation.errors import SettingsError
    from fenji.jobs_runner import SimulationRunner, runner_from_settings

    monkeypatch.setenv("FENJI_SITES_DIR", str(tmp_path))
    monkeypatch.delenv("FENJI_SUPERLINK", raising=False)
    settings = load_coordinator_settings(home=tmp_path / "home")
    assert isinstance(runner_from_settings(settings), SimulationRunner)
    monkeypatch.setenv("FENJI_SUPERLINK", "city-superlink")
    runner = runner_from_settings(settings)
    assert isinstance(runner, DeploymentRunner) and "SuperLink 'city-superlink'" in str(runner)
    assert (runner.app / "pyproject.toml").is_file()  # this checkout, by default
    monkeypatch.setenv("FENJI_FLWR_APP", str(tmp_path))
    with pytest.raises(SettingsError, match="FENJI_FLWR_APP"):
        runner_from_settings(settings)


def test_a_run_whose_log_cannot_be_followed_is_stopped_not_left_running(flwr):
    runner, scenario = flwr
    scenario([ROUND_1], statuses=["running"], log=[])
    with pytest.raises(JobFailed, match="lost the log of run 4242"):
        runner(_request(), lambda r, m: None)
    assert ["stop", str(RUN_ID), "city-superlink"] in runner.calls()


def test_the_flower_run_id_is_handed_on_before_the_first_round(flwr):
    runner, scenario = flwr
    scenario([ROUND_1, ROUND_2, RESULT])
    reported: list[str] = []
    seen_at_round: list[list[str]] = []
    runner(_request(on_engine_run=reported.append), lambda r, m: seen_at_round.append(list(reported)))
    assert reported == [str(RUN_ID)] and seen_at_round[0] == [str(RUN_ID)]


def test_a_run_id_that_cannot_be_stored_does_not_end_the_run(flwr):
    runner, scenario = flwr
    scenario([ROUND_1, ROUND_2, RESULT])

    def broken_store(run_id: str) -> None:
        raise OSError("database is locked")

    assert runner(_request(on_engine_run=broken_store), lambda r, m: None).version == "3"
    assert not any(call[0] == "stop" for call in runner.calls())


@pytest.mark.parametrize("stop_fails", [False, True])
def test_stop_run_says_whether_flower_stopped_the_run(flwr, stop_fails):
    runner, scenario = flwr
    scenario([], stop_fails=stop_fails)
    said = runner.stop_run(str(RUN_ID))
    assert ["stop", str(RUN_ID), "city-superlink", "--format", "json"] in runner.calls()
    if stop_fails:
        assert "did not confirm it stopped" in said and "couldn't be stopped" in said
    else:
        assert said == "stopped on city-superlink (flwr stop)"


@pytest.mark.parametrize("stored", ["--help", "12; rm -rf /", ""])
def test_a_stored_run_id_that_is_not_a_number_never_reaches_flwr(flwr, tmp_path, stored):
    runner, scenario = flwr
    scenario([])
    said = runner.stop_run(stored)
    assert "is not a Flower run id" in said
    assert not (tmp_path / "calls.log").exists()  # flwr was never called


def test_a_job_asking_for_dp_epsilon_is_refused_not_run_without_it(flwr, tmp_path):
    runner, scenario = flwr
    scenario([ROUND_1, ROUND_2, RESULT])
    with pytest.raises(JobFailed, match="dp_epsilon is not sent") as refused:
        runner(_request(dp_epsilon=1.5), lambda r, m: None)
    assert refused.value.error == "DpEpsilonNotSent" and "own DP policy" in str(refused.value)
    assert not (tmp_path / "calls.log").exists()  # flwr was never called


ANSWER = {"columns": ["count", "suppressed_sites"], "cells": [{"count": 480.0, "suppressed_sites": 0}],
          "suppressed_sites": [0], "rows": 480, "sites": ["clinic_a", "clinic_b", "clinic_c"], "dp_epsilon": 0.0,
          "excluded": [{"round": 0, "phase": "analytics", "node": 9, "site": "clinic_d",
                        "reason": "refused: count queries are not allowed by this site's policy"}]}


def test_a_query_is_a_run_of_the_app_whose_result_is_the_answer(flwr):
    from coordinator.service.queries import QueryRequest
    from federation.analytics import Count

    runner, scenario = flwr
    scenario([_event("result", answer=ANSWER, engine="deployment", flower_run_id=RUN_ID)])
    assert runner.run_query(QueryRequest(id=5, task="referral_risk", query=Count())) == ANSWER
    run = runner.calls()[0]
    assert run[:3] == ["run", str(runner.app), "city-superlink"] and run[-1] == "--stream"
    assert run[run.index("--run-config") + 1] == \
        'kind="analytics" task="referral_risk" query=\'{"group_by":null,"kind":"count"}\''


def test_a_failed_query_names_the_sites_left_out(flwr):
    from coordinator.service.queries import QueryRequest
    from federation.analytics import Count

    runner, scenario = flwr
    scenario([_event("failed", error="NotEnoughSitesError", reason="analytics (round 0): 2 usable repl(ies) ...",
                     excluded=ANSWER["excluded"])], statuses=["finished:failed"])
    with pytest.raises(JobFailed, match="2 usable") as failed:
        runner.run_query(QueryRequest(id=5, task="referral_risk", query=Count()))
    assert failed.value.error == "NotEnoughSitesError"
    assert [(s["site"], s["phase"]) for s in failed.value.sites] == [("clinic_d", "analytics")]


@pytest.mark.parametrize(("column", "bad"), [("it's", "'"), ("rub\x7fout", "\x7f")])
def test_a_query_that_cannot_travel_in_a_toml_literal_string_is_refused_before_flwr_runs(flwr, tmp_path, column, bad):
    """A quote would end the run config's literal string, and TOML refuses DEL in one (JSON escapes the
    other control characters): refused, naming the character, and ``flwr`` is never called."""
    from coordinator.service.queries import QueryRequest
    from federation.analytics import Count

    runner, scenario = flwr
    scenario([_event("result", answer=ANSWER, engine="deployment", flower_run_id=RUN_ID)])
    with pytest.raises(JobFailed, match="cannot travel in a run config") as refused:
        runner.run_query(QueryRequest(id=6, task="referral_risk", query=Count(group_by=column)))
    assert refused.value.error == "QueryNotSent" and f"({bad!r} in" in str(refused.value)
    assert not (tmp_path / "calls.log").exists()
