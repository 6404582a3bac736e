"""Faults on Flower's deployment engine, with real processes on loopback: a SuperNode killed mid-round,
and the coordinator service's jobs on the deployment engine.

A SuperLink over TLS with node authentication, four clinics' SuperNodes (one more than the key
holder's min-sites of 3; commands as in tests/fenji/test_deployment_engine.py), and SIGKILL to a
SuperNode and its app processes while it holds a message of the run:

1. one site killed while it computes the run's first reply: the run completes over the other three,
   the coordinator's record names the missing site, and every sum the key holder decrypts is over
   those three (never fewer than min-sites);
2. a job submitted through the service API (the deployment engine's runner, ``fenji.deployment_jobs``)
   loses one of its three sites mid-round, so fewer than min-sites remain: the job fails at once with
   the reason and the site's name, never left running; the SuperNode is restarted and the job
   submitted again runs on the deployment engine round by round (without personalisation: the sites
   report no personalised model) and is recorded with its Flower run.

The key holder refuses a cohort that, with a sum it decrypted earlier, would isolate fewer than
min-sites sites (``keyholder.key_holder``): once a sum over four sites is decrypted, a sum over three
of them would give the fourth site's numbers away. So every run here decrypts over the same three
clinics: the fourth is killed before its first reply, and stays down afterwards.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from coordinator.audit import AuditLog
from coordinator.service import create_app
from fenji.deployment_jobs import DeploymentRunner
from simulation.synth import ClinicProfile
from tests.coordinator.service.conftest import make_service, registry_file  # noqa: F401  (a fixture)
from tests.coordinator.service.test_jobs import wait_for
from tests.fenji.flower_processes import (
    CONNECTION,
    ROOT,
    Processes,
    start_federation,
    tail,
    wait_for_log,
)
from tests.servers import running

CLINICS = [
    ClinicProfile("clinic_a", 200, age_mean=45),
    ClinicProfile("clinic_b", 160, age_mean=70, severity_shift=0.3),
    ClinicProfile("clinic_c", 140, label_offset=0.4),
    ClinicProfile("clinic_d", 150, age_mean=60),
]
THREE = ["clinic_a", "clinic_b", "clinic_c"]
APP_STARTED = "Start `flwr-clientapp` process"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(c) for c in ("flower-superlink", "flower-supernode", "flwr")),
    reason="Flower's CLIs (flower-superlink, flower-supernode, flwr) are not on PATH",
)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    with start_federation(tmp_path_factory.mktemp("deployment-faults"), CLINICS, min_sites=3, rounds=2) as fed:
        yield fed


def _log_size(fed, site: str) -> int:
    return len(Processes.log(fed.supernodes[site]))


def _kill_when_it_computes(fed, site: str, kind: str, since: int) -> None:
    """SIGKILL ``site``'s SuperNode and its app process once it has taken a ``kind`` message (after the
    first ``since`` characters of its log: an earlier run's are not this one's) and started the app that
    would answer it (importing the app takes seconds: it cannot have answered)."""
    log = wait_for_log(fed.supernodes[site], f"Receiving: {kind} message", APP_STARTED, since=since)
    assert re.search(f"Receiving: {re.escape(kind)} message.*{re.escape(APP_STARTED)}", log, re.DOTALL), tail(log)
    fed.kill_supernode(site)
    assert f"Sending: {kind} message" not in Processes.log(fed.supernodes[site])[since:], \
        "it answered before it was killed"


def _decrypted(fed) -> list[dict]:
    return [e["details"] for e in fed.keyholder.ledger.entries() if e["action"] == "decrypt"]


def test_a_supernode_killed_mid_round_leaves_the_run_to_the_other_sites(federation):
    fed = federation
    fed.only_online([c.name for c in CLINICS])
    before, since = len(_decrypted(fed)), _log_size(fed, "clinic_d")
    run = fed.procs.start("flwr-run-killed-site", [
        "flwr", "run", str(ROOT), CONNECTION, "--run-config", "num-server-rounds=1 round-timeout=300", "--stream",
    ], cwd=ROOT)
    _kill_when_it_computes(fed, "clinic_d", "query.stats", since)
    try:
        code = run.wait(timeout=1200)  # only stops a hang: the run ends on its own
    except subprocess.TimeoutExpired:
        Processes.stop(run)
        pytest.fail(f"the run hung after a SuperNode was killed:\n{tail(Processes.log(run))}")
    out = Processes.log(run)
    started = re.search(r"Successfully started run (\d+)", out)
    assert code == 0 and started, tail(out)
    assert fed.flwr_json("flwr-ls-killed", "ls", CONNECTION, "--run-id", started.group(1))["runs"][0]["status"] \
        == "finished:completed", tail(out)
    (entry,) = [e["details"] for e in AuditLog(fed.work / "coordinator" / "audit.jsonl").entries()
                if e["action"] == "training-run" and e["details"]["flower_run_id"] == int(started.group(1))]
    assert entry["sites"] == THREE, entry
    # The missing site is named (by the name its SuperNode was registered under: it never said its own).
    assert {e["site"] for e in entry["excluded"]} == {"clinic_d"}, entry["excluded"]
    assert "stats" in {e["phase"] for e in entry["excluded"]}, entry["excluded"]
    assert all("Node Unavailable" in e["reason"] or e["reason"] == "no reply before the timeout"
               for e in entry["excluded"]), entry["excluded"]
    # Each sum (statistics, the round, calibration) was decrypted over the three sites that answered.
    decrypted = _decrypted(fed)[before:]
    assert len(decrypted) == 3 and all(d["cohort"] == THREE for d in decrypted), decrypted


def test_a_job_below_min_sites_fails_by_name_and_runs_when_submitted_again(federation, tmp_path, registry_file):  # noqa: F811
    fed = federation
    fed.only_online(THREE)
    service = make_service(tmp_path / "home", registry_file)
    with running(create_app(service.coordinator)) as service.base_url:
        service.coordinator.jobs.start(DeploymentRunner(ROOT, CONNECTION, flwr_home=fed.flwr_home))
        try:
            since = _log_size(fed, "clinic_c")
            with service.client("data_scientist") as client:
                first = client.post("/api/v1/jobs", json={"task": "referral_risk", "rounds": 1}).json()
            _kill_when_it_computes(fed, "clinic_c", "train", since)
            failed = wait_for(service, first["id"], deadline=1200)
            assert failed["status"] == "failed" and failed["error"] == "NotEnoughSitesError", failed
            assert "min-sites" in failed["reason"] and "clinic_c" in failed["reason"], failed
            assert [(s["site"], s["phase"]) for s in failed["failed_sites"]] == [("clinic_c", "train")], failed

            fed.only_online(THREE)  # the clinic's SuperNode is back
            with service.client("data_scientist") as client:
                again = client.post("/api/v1/jobs", json={"task": "referral_risk", "rounds": 1,
                                                          "personalisation": False}).json()
            done = wait_for(service, again["id"], deadline=1200)
        finally:
            service.coordinator.jobs.stop(timeout=1200)
    assert done["status"] == "succeeded", done
    assert done["rounds_done"] == 1 and [r["round"] for r in done["history"]] == [1.0], done
    assert 0.5 < done["history"][0]["auroc"] <= 1.0, done["history"]
    result = done["result"]
    assert result["engine"] == "deployment" and sorted(result["sites"]) == THREE and result["excluded"] == [], result
    assert result["model"] == "fenji-referral_risk" and result["version"], result
    # Personalisation off: no site fitted a personalised model, so none reported one.
    assert "personalisation" not in result, result
    assert not [k for m in result["sites"].values() for k in m if k.startswith("personal-")], result["sites"]
    audit = AuditLog(fed.work / "coordinator" / "audit.jsonl").entries()
    (run,) = [e["details"] for e in audit if e["action"] == "training-run"
              and e["details"]["flower_run_id"] == result["flower_run_id"]]
    assert str(run["version"]) == result["version"] and run["sites"] == THREE, run
