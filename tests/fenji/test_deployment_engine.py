"""The ServerApp and ClientApp on Flower's deployment engine, over TLS with SuperNode authentication.

One SuperLink (``--ssl-* --enable-supernode-auth``) and three SuperNodes on loopback, each with its
own EC key registered through ``flwr supernode register`` and its own synthetic clinic; then:

1. ``flwr run`` of this project completes over TLS with node authentication on;
2. SuperNodes that are not registered are refused (an unregistered key; no key at all, which would
   self-register when authentication is off);
3. SuperNodes that do not trust the CA, or that talk plain HTTP, cannot connect.

Certificates and keys are made under tmp_path by ``scripts/make_tls_material.py``; every process
started here is stopped (with its descendants) in a finally block. The commands are the ones in
docs/deployment.md, "TLS and SuperNode authentication".
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from simulation.synth import ClinicProfile
from tests.fenji.flower_processes import (
    CONNECTION,
    ROOT,
    Processes,
    start_federation,
    tail,
)

CLINICS = [
    ClinicProfile("clinic_a", 200, age_mean=45),
    ClinicProfile("clinic_b", 160, age_mean=70, severity_shift=0.3),
    ClinicProfile("clinic_c", 140, label_offset=0.4),
]
SITES = [c.name for c in CLINICS]
RUN_CONFIG = "num-server-rounds=2"
ROUNDS = 2

pytestmark = pytest.mark.skipif(
    not all(shutil.which(c) for c in ("flower-superlink", "flower-supernode", "flwr")),
    reason="Flower's CLIs (flower-superlink, flower-supernode, flwr) are not on PATH",
)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    # A spare key, registered, is used below without the CA; a rogue one is never registered.
    with start_federation(tmp_path_factory.mktemp("deployment-tls"), CLINICS, min_sites=3, rounds=ROUNDS,
                          spare_keys=("spare", "rogue"), registered_spares=("spare",)) as fed:
        yield fed


def test_run_completes_over_tls_with_node_auth(federation):
    fed = federation
    code, out = fed.flwr("flwr-run", "run", str(ROOT), CONNECTION, "--run-config", RUN_CONFIG, "--stream", timeout=600)
    assert code == 0, f"flwr run exited with {code}:\n{tail(out)}"
    started = re.search(r"Successfully started run (\d+)", out)
    assert started, tail(out)
    run = fed.flwr_json("flwr-ls", "ls", CONNECTION, "--run-id", started.group(1))["runs"][0]
    assert run["status"] == "finished:completed", (run, tail(out))
    # Every round had all three sites and no failures, and each site did the whole protocol.
    assert f"[ROUND {ROUNDS}/{ROUNDS}]" in out, tail(out)
    assert out.count("aggregate_train: Received 3 results and 0 failures") == ROUNDS, tail(out)
    assert out.count("aggregate_evaluate: Received 3 results and 0 failures") == ROUNDS, tail(out)
    for proc in fed.procs.started:
        if proc.args[0] == "flower-supernode" and "--auth-supernode-private-key" in proc.args:
            site = Path(proc.args[proc.args.index("--auth-supernode-private-key") + 1]).name
            if site in SITES:
                log = Processes.log(proc)
                for kind in ("query.stats", "train", "query.calibrate", "evaluate"):
                    assert f"Receiving: {kind} message" in log, (site, kind, tail(log))
    superlink_log = Processes.log(fed.superlink)
    assert f"Uvicorn running on https://127.0.0.1:{fed.port}" in superlink_log, tail(superlink_log)
    # The coordinator registered the model and audited the run, as `fenji sim --register` does.
    from coordinator.audit import AuditLog
    from node_agent.distribution import load_task_model

    home = fed.work / "coordinator"
    audit = AuditLog(home / "audit.jsonl")
    assert audit.verify() == 1
    (entry,) = [e["details"] for e in audit.entries() if e["action"] == "training-run"]
    assert entry["engine"] == "deployment" and entry["flower_run_id"] == int(started.group(1)), entry
    assert len(entry["sites"]) == 3 and entry["rounds"] == ROUNDS and entry["encrypted"] is True, entry
    model, _, _ = load_task_model(f"sqlite:///{(home / 'mlflow.db').resolve()}", "referral_risk",
                                  version=str(entry["version"]))
    assert model.ref.version == str(entry["version"]) and model.flat.size > 0
    # Every sum was decrypted by the key holder's service for the three enrolled clinics, once per query.
    decrypted = [e["details"] for e in fed.keyholder.ledger.entries() if e["action"] == "decrypt"]
    assert len(decrypted) == ROUNDS + 2, decrypted  # statistics, each round, calibration
    assert all(d["cohort"] == sorted(SITES) and d["caller"] == "coordinator" for d in decrypted), decrypted
    assert len({d["query"] for d in decrypted}) == len(decrypted)


def _until_exit(fed, argvs: dict[str, list[str]]) -> list[tuple[subprocess.Popen, str]]:
    """Start SuperNodes that should be refused; wait (90 s at most) for each to exit; their logs."""
    procs = [fed.procs.start(name, argv, cwd=fed.work) for name, argv in argvs.items()]
    for proc in procs:
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            fed.procs.stop(proc)  # still running after 90 s: not refused; the log checks below fail
    return [(proc, Processes.log(proc)) for proc in procs]


def test_unregistered_supernodes_are_refused(federation):
    fed = federation
    # A key the SuperLink was never told about, and no key at all (the SuperNode would register
    # itself, which the Fleet API allows unless --enable-supernode-auth).
    (rogue, rogue_out), (keyless, keyless_out) = _until_exit(fed, {
        "supernode-rogue": fed.supernode_argv(key="rogue", retries=1),
        "supernode-keyless": fed.supernode_argv(key=None, retries=1)})
    assert rogue.returncode not in (None, 0) and "[code: 2004] Failed to activate SuperNode" in rogue_out, rogue_out
    assert keyless.returncode not in (None, 0) and "[code: 2001] SuperNode authentication is enabled" in keyless_out, \
        keyless_out
    assert fed.online_nodes() == {fed.node_ids[s] for s in SITES}


def test_supernodes_without_tls_trust_cannot_connect(federation):
    fed = federation
    # The registered spare key, so that only the missing CA (or TLS) stands in the way.
    (no_ca, no_ca_out), (plain, plain_out) = _until_exit(fed, {
        "supernode-no-ca": fed.supernode_argv(key="spare", ca=False, retries=1),
        "supernode-plain-http": fed.supernode_argv(key=None, ca=False, insecure=True, retries=1)})
    assert no_ca.returncode not in (None, 0) and "CERTIFICATE_VERIFY_FAILED" in no_ca_out, no_ca_out
    assert plain.returncode not in (None, 0) and "Failed to initialize the connection to the SuperLink" in plain_out, \
        plain_out
    # The Control API (the flwr CLI) is on the same TLS port: without the CA it is refused too (the
    # CLI only says the SuperLink is unavailable), while the same call with the CA succeeds.
    code, out = fed.flwr("supernode-ls-no-ca", "supernode", "ls", "no-ca")
    assert code != 0 and "Connection to the SuperLink is unavailable" in out, out
    assert fed.online_nodes() == {fed.node_ids[s] for s in SITES}
