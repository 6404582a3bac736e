"""Attack: whoever submits a run ships the code a SuperNode runs; a clinic runs only the app it approved.

On Flower's deployment engine the app bundle (FAB) comes from whoever calls ``flwr run``, and the
policy checks and the egress guard are code inside it. Before ``node_agent.launcher``, a SuperNode
ran any bundle it was sent: a copy of the project with one byte changed (here a comment in the
egress guard; it could as well have been the guard's threshold) ran and trained at the clinic.

A real SuperLink (TLS, node authentication) and one clinic started with ``fenji node up`` (SuperNode
with ``--isolation process`` and the launcher) on loopback, with its own ``FLWR_HOME``; the clinic
approved the project's bundle by digest (``fenji node approve-app --fab <app folder>``):

1. that bundle runs a whole encrypted run (one round, ``min-sites`` 1 at the key holder);
2. the same bundle with one byte changed is refused at the node: it is never unpacked there, no job
   is accepted and nothing trains, the refusal is in the node's audit log with the bundle's digest,
   and the coordinator is told "declined by clinic_a: app not approved".

Both apps are copies of the project made once (``build_fab_from_disk`` then unpacked), so edits to
the working tree during the test do not change what was approved.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from federation.identity import ENROLMENT_FILE
from keyholder.process import start_key_holder_service
from keyholder.state import KeyHolderState
from models.spec import load_task
from node_agent.budget import node_audit
from node_agent.ingest import ingest_file
from node_agent.mapping import load_mapping
from node_agent.policy import fab_digest
from node_agent.store import SiteStore
from simulation.engine import approve_at_sites
from simulation.synth import ClinicProfile, write_federation
from tests.fenji.flower_processes import MAKE_TLS, QUIET, ROOT, Processes
from tests.fenji.flower_processes import free_port as _free_port
from tests.fenji.flower_processes import tail as _tail
from tests.fenji.flower_processes import wait_https as _wait_https

CONNECTION = "fenji-tls"
RUN_CONFIG = "num-server-rounds=1 min-sites=1"
SITE = "clinic_a"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(c) for c in ("flower-superlink", "flower-supernode", "flwr")),
    reason="Flower's CLIs (flower-superlink, flower-supernode, flwr) are not on PATH",
)


def _snapshot_apps(work):
    """The project as one FAB, unpacked twice: as built, and with one byte of the egress guard changed."""
    from flwr.cli.build import build_fab_from_disk

    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(ROOT))) as fab:
        fab.extractall(work / "app")
    # One site: its weight n / N is 1 up to the CKKS error of the decrypted N, which the packed path's
    # [0, 1] check (federation.packing) refuses; packing is not what this test is about, so this
    # copy of the app declares it off (Flower accepts only declared run-config keys).
    pyproject = work / "app" / "pyproject.toml"
    text = pyproject.read_text()
    if "packed" not in text:
        pyproject.write_text(text.replace("[tool.flwr.app.config]\n", "[tool.flwr.app.config]\npacked = false\n", 1))
    shutil.copytree(work / "app", work / "app-tampered")
    guard = work / "app-tampered" / "node_agent" / "egress.py"
    source = guard.read_bytes()
    at = source.index(b"choke point") if b"choke point" in source else source.index(b"the")
    guard.write_bytes(source[:at] + bytes([source[at] ^ 0x20]) + source[at + 1:])  # one letter's case
    approved, tampered = (fab_digest(build_fab_from_disk(work / name)) for name in ("app", "app-tampered"))
    assert approved != tampered
    return approved, tampered


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    work = tmp_path_factory.mktemp("unapproved-app")
    logs, flwr_home, clinic_home = work / "logs", work / "flwr-home", work / "clinic-flwr-home"
    for folder in (logs, flwr_home, clinic_home):
        folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "FENJI_"))} | QUIET | {
        "FLWR_HOME": str(flwr_home), "FENJI_HOME": str(work / "coordinator")}
    procs = Processes(logs, env)
    key_holder = None
    try:
        spec = load_task("referral_risk")
        ((_, path, mapping),) = write_federation(work / "exports", clinics=[ClinicProfile(SITE, 200)], seed=3,
                                                    bad_rows=False)
        site = work / "sites" / SITE
        with SiteStore(site) as store:
            ingest_file(store, spec, path, load_mapping(mapping))
        state = KeyHolderState(work / "keyholder")
        state.init()
        state.enrol(SITE, "TEST-A").save(site / ENROLMENT_FILE)
        approve_at_sites([site], spec, rounds=1)
        key_holder = start_key_holder_service(state.home, min_sites=1)
        coordinator_env = {"FENJI_KEYHOLDER_URL": key_holder.url,
                           "FENJI_KEYHOLDER_TOKEN": state.issue_token("coordinator")}

        approved, tampered = _snapshot_apps(work)
        from fenji.cli import app as fenji_cli

        answer = CliRunner().invoke(fenji_cli, ["node", "approve-app", "--site-dir", str(site), "--fab",
                                                str(work / "app"), "--by", "clinic_a's admin"])
        assert answer.exit_code == 0 and f"digest: {approved}" in answer.output, answer.output

        certs = work / "certs"
        code, out = procs.run("make-tls", [sys.executable, str(MAKE_TLS), str(certs), "--supernode", SITE], timeout=60)
        assert code == 0, out
        port = _free_port()
        (flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\nroot-certificates = "{certs / "ca.crt"}"\n')
        procs.start("superlink", [
            "flower-superlink", "--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile", str(certs / "server.pem"),
            "--ssl-keyfile", str(certs / "server.key"), "--enable-supernode-auth", "--port", str(port),
        ], cwd=work, extra_env=coordinator_env)
        _wait_https(port, certs / "ca.crt")
        code, out = procs.run("register", ["flwr", "supernode", "register", str(certs / f"{SITE}.pub"), CONNECTION,
                                           "--name", SITE, "--format", "json"], timeout=60, cwd=ROOT)
        assert code == 0 and '"success": true' in out, out

        # The clinic's machine: its own FLWR_HOME (where an app it runs is unpacked), started as a clinic would.
        node = procs.start("node-up", [
            str(Path(sys.executable).with_name("fenji")), "node", "up", "--site-dir", str(site), "--superlink", f"127.0.0.1:{port}",
            "--root-certificates", str(certs / "ca.crt"), "--auth-key", str(certs / SITE),
            "--runtime-port", str(_free_port()), "--no-serve"], cwd=work, extra_env={"FLWR_HOME": str(clinic_home)})
        deadline = time.monotonic() + 90
        while "SuperNode joined the federation" not in Processes.log(node):
            if node.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the clinic's node did not join:\n{_tail(Processes.log(node))}")
            time.sleep(1)
        yield {"work": work, "site": site, "node": node, "procs": procs, "approved": approved, "tampered": tampered,
               "clinic_home": clinic_home}
    finally:
        procs.stop_all()
        if key_holder is not None:
            key_holder.stop()


def _flwr_run(clinic, app: str) -> tuple[str, str]:
    """``flwr run`` of one app folder; Flower's run id and the streamed output."""
    code, out = clinic["procs"].run(f"flwr-run-{app}", ["flwr", "run", str(clinic["work"] / app), CONNECTION,
                                                        "--run-config", RUN_CONFIG, "--stream"], timeout=900, cwd=ROOT)
    started = re.search(r"Successfully started run (\d+)", out)
    assert code is not None and started, f"flwr run {app} ({code}):\n{_tail(out)}"
    return started.group(1), out


def _run_status(clinic, run_id: str) -> str:
    code, out = clinic["procs"].run(f"flwr-ls-{run_id}", ["flwr", "ls", CONNECTION, "--run-id", run_id,
                                                          "--format", "json"], timeout=60, cwd=ROOT)
    assert code == 0, out
    return re.search(r'"status": "([^"]+)"', out).group(1)


def _unpacked(clinic, digest: str) -> list[str]:
    apps = clinic["clinic_home"] / "apps"
    return [p.name for p in apps.iterdir() if p.name.endswith(digest[:8])] if apps.is_dir() else []


def _supernode_log(clinic) -> str:
    return (clinic["site"] / "logs" / "supernode.log").read_text(errors="replace")


def test_the_approved_app_runs(clinic):
    run_id, out = _flwr_run(clinic, "app")
    assert _run_status(clinic, run_id) == "finished:completed", _tail(out)
    entries = node_audit(clinic["site"]).entries()
    assert any(e["action"] == "job-accepted" for e in entries), entries
    assert not [e for e in entries if e["action"] == "app-refused"], entries
    assert _unpacked(clinic, clinic["approved"]), "the approved bundle was never unpacked at the node"
    assert "Receiving: train message" in _supernode_log(clinic)


def test_an_app_with_one_changed_byte_is_refused_and_never_trains(clinic):
    before = len(node_audit(clinic["site"]).entries())
    trained = _supernode_log(clinic).count("Receiving: train message")
    run_id, out = _flwr_run(clinic, "app-tampered")
    assert _run_status(clinic, run_id) != "finished:completed", _tail(out)
    new = node_audit(clinic["site"]).entries()[before:]
    assert new and {e["action"] for e in new} == {"app-refused"}, new  # no job accepted, no DP charge
    assert all(e["details"]["fab"] == clinic["tampered"] for e in new), new
    assert all(e["details"]["reason"].startswith("app not approved") for e in new), new
    assert not _unpacked(clinic, clinic["tampered"]), "the refused bundle was unpacked at the node"
    assert "declined by clinic_a: app not approved" in out, _tail(out)
    assert _supernode_log(clinic).count("Receiving: train message") == trained, "a training round reached the clinic"
