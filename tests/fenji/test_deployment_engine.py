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

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from federation.identity import ENROLMENT_FILE
from keyholder.process import start_key_holder_service
from keyholder.state import KeyHolderState
from models.spec import load_task
from node_agent.ingest import ingest_file
from node_agent.mapping import load_mapping
from node_agent.store import SiteStore
from simulation.engine import approve_at_sites
from simulation.synth import ClinicProfile, write_federation

ROOT = Path(__file__).resolve().parents[2]
MAKE_TLS = ROOT / "scripts" / "make_tls_material.py"
CLINICS = [
    ClinicProfile("clinic_a", 200, age_mean=45),
    ClinicProfile("clinic_b", 160, age_mean=70, severity_shift=0.3),
    ClinicProfile("clinic_c", 140, label_offset=0.4),
]
SITES = [c.name for c in CLINICS]
CONNECTION = "fenji-tls"
RUN_CONFIG = "num-server-rounds=2"
ROUNDS = 2
QUIET = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}

pytestmark = pytest.mark.skipif(
    not all(shutil.which(c) for c in ("flower-superlink", "flower-supernode", "flwr")),
    reason="Flower's CLIs (flower-superlink, flower-supernode, flwr) are not on PATH",
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (Flower's SuperExec and app processes start sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Processes:
    """Processes started by this test, each in a session of its own, with logs under ``log_dir``."""

    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir, self.env = log_dir, env
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], cwd: Path | None = None,
              extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, cwd=cwd, env=self.env | (extra_env or {}), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        proc.log_file = log  # type: ignore[attr-defined]
        proc.log_path = self.log_dir / f"{name}.log"  # type: ignore[attr-defined]
        self.started.append(proc)
        return proc

    def run(self, name: str, argv: list[str], timeout: float, cwd: Path | None = None) -> tuple[int | None, str]:
        """Run to completion (killed at ``timeout``, then the code is None); the code and the output."""
        proc = self.start(name, argv, cwd=cwd)
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            code = None
        return code, self.log(proc)

    @staticmethod
    def log(proc: subprocess.Popen) -> str:
        proc.log_file.flush()  # type: ignore[attr-defined]
        return proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined]

    @staticmethod
    def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
        family = _descendants(proc.pid)
        for pid in [proc.pid, *family]:
            for kill in (lambda p: os.killpg(p, signal.SIGTERM), lambda p: os.kill(p, signal.SIGTERM)):
                try:
                    kill(pid)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + grace
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in family):
            time.sleep(0.2)
        for pid in [proc.pid, *family]:
            if Path(f"/proc/{pid}").exists() and not _zombie(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        proc.log_file.close()  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if not proc.log_file.closed:  # type: ignore[attr-defined]
                self.stop(proc)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _tail(text: str, n: int = 3000) -> str:
    return text[-n:]


class Federation:
    def __init__(self, procs: Processes, work: Path, certs: Path, sites: dict[str, Path], port: int,
                 node_ids: dict[str, int], superlink: subprocess.Popen):
        self.procs, self.work, self.certs, self.sites, self.port = procs, work, certs, sites, port
        self.node_ids, self.superlink = node_ids, superlink
        self.address = f"127.0.0.1:{port}"

    def flwr(self, name: str, *args: str, timeout: float = 60) -> tuple[int | None, str]:
        return self.procs.run(name, ["flwr", *args], timeout=timeout, cwd=ROOT)

    def flwr_json(self, name: str, *args: str) -> dict:
        code, out = self.flwr(name, *args, "--format", "json")
        assert code == 0, f"flwr {' '.join(args)} failed ({code}):\n{_tail(out)}"
        return json.loads(out[out.index("{"):])

    def supernode_argv(self, *, key: str | None, ca: bool = True, insecure: bool = False,
                       site: str = "clinic_a", port: int | None = None, retries: int | None = None) -> list[str]:
        argv = ["flower-supernode"]
        if insecure:
            argv.append("--insecure")
        argv += ["--superlink", self.address]
        if ca:
            argv += ["--root-certificates", str(self.certs / "ca.crt")]
        if key:
            argv += ["--auth-supernode-private-key", str(self.certs / key)]
        argv += ["--port", str(port or _free_port())]
        if retries is not None:
            argv += ["--max-retries", str(retries)]
        argv += ["--node-config", f"site-dir='{self.sites[site]}'"]
        return argv

    def online_nodes(self) -> set[int]:
        nodes = self.flwr_json("supernode-ls", "supernode", "ls", CONNECTION)["nodes"]
        return {int(n["node-id"]) for n in nodes if n["status"] == "online"}


def _make_sites(root: Path) -> dict[str, Path]:
    spec = load_task("referral_risk")
    sites = {}
    for name, path, mapping in write_federation(root / "exports", clinics=CLINICS, seed=7, bad_rows=False):
        with SiteStore(root / "sites" / name) as store:
            ingest_file(store, spec, path, load_mapping(mapping))
        sites[name] = root / "sites" / name
    return sites


def _wait_https(port: int, ca: Path, timeout: float = 60) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=context, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"SuperLink did not answer over TLS on 127.0.0.1:{port}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    work = tmp_path_factory.mktemp("deployment-tls")
    flwr_home = work / "flwr-home"
    flwr_home.mkdir()
    logs = work / "logs"
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "FENJI_"))} | QUIET | {
        "FLWR_HOME": str(flwr_home), "FENJI_HOME": str(flwr_home.parent / "coordinator")}
    procs = Processes(logs, env)
    key_holder = None
    try:
        sites = _make_sites(work)
        # The key holder: another party's service, with its own folder, started on its own; each
        # clinic is enrolled (the enrolment file goes into its site folder, as `fenji node enrol`
        # puts it) and the coordinator gets a token. Only the SuperLink's process is told where it is.
        state = KeyHolderState(work / "keyholder")
        state.init()
        for name, site_dir in sites.items():
            state.enrol(name, f"TEST-{name}").save(site_dir / ENROLMENT_FILE)
        # Each clinic's admin approves the plan (`fenji node approve`); a SuperNode runs nothing else.
        approve_at_sites(list(sites.values()), load_task("referral_risk"), rounds=ROUNDS)
        key_holder = start_key_holder_service(state.home, min_sites=3)
        coordinator_env = {"FENJI_KEYHOLDER_URL": key_holder.url,
                           "FENJI_KEYHOLDER_TOKEN": state.issue_token("coordinator")}
        certs = work / "certs"
        code, out = procs.run("make-tls", [sys.executable, str(MAKE_TLS), str(certs),
                                           *[a for s in [*SITES, "spare", "rogue"] for a in ("--supernode", s)]],
                              timeout=60)
        assert code == 0, out
        port = _free_port()
        (flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\nroot-certificates = "{certs / "ca.crt"}"\n\n'
            f'[superlink.no-ca]\naddress = "127.0.0.1:{port}"\n'
        )
        superlink = procs.start("superlink", [
            "flower-superlink", "--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile", str(certs / "server.pem"),
            "--ssl-keyfile", str(certs / "server.key"), "--enable-supernode-auth", "--port", str(port),
        ], cwd=work, extra_env=coordinator_env)
        _wait_https(port, certs / "ca.crt")
        fed = Federation(procs, work, certs, sites, port, {}, superlink)

        # Register the three clinics' keys and a spare one (registered, used below without the CA).
        for name in [*SITES, "spare"]:
            answer = fed.flwr_json(f"register-{name}", "supernode", "register", str(certs / f"{name}.pub"),
                                   CONNECTION, "--name", name)
            assert answer["success"], answer
            fed.node_ids[name] = int(answer["node-id"])
        for name in SITES:
            procs.start(f"supernode-{name}", fed.supernode_argv(key=name, site=name), cwd=work)
        deadline = time.monotonic() + 90
        while fed.online_nodes() != {fed.node_ids[s] for s in SITES}:
            if time.monotonic() > deadline:
                pytest.fail("the three clinics' SuperNodes did not come online:\n"
                            + "\n".join(_tail(Processes.log(p), 1500) for p in procs.started[-3:]))
            time.sleep(1)
        fed.keyholder = state
        yield fed
    finally:
        procs.stop_all()
        if key_holder is not None:
            key_holder.stop()


def test_run_completes_over_tls_with_node_auth(federation):
    fed = federation
    code, out = fed.flwr("flwr-run", "run", str(ROOT), CONNECTION, "--run-config", RUN_CONFIG, "--stream", timeout=300)
    assert code == 0, f"flwr run exited with {code}:\n{_tail(out)}"
    started = re.search(r"Successfully started run (\d+)", out)
    assert started, _tail(out)
    run = fed.flwr_json("flwr-ls", "ls", CONNECTION, "--run-id", started.group(1))["runs"][0]
    assert run["status"] == "finished:completed", (run, _tail(out))
    # Every round had all three sites and no failures, and each site did the whole protocol.
    assert f"[ROUND {ROUNDS}/{ROUNDS}]" in out, _tail(out)
    assert out.count("aggregate_train: Received 3 results and 0 failures") == ROUNDS, _tail(out)
    assert out.count("aggregate_evaluate: Received 3 results and 0 failures") == ROUNDS, _tail(out)
    for proc in fed.procs.started:
        if proc.args[0] == "flower-supernode" and "--auth-supernode-private-key" in proc.args:
            site = Path(proc.args[proc.args.index("--auth-supernode-private-key") + 1]).name
            if site in SITES:
                log = Processes.log(proc)
                for kind in ("query.stats", "train", "query.calibrate", "evaluate"):
                    assert f"Receiving: {kind} message" in log, (site, kind, _tail(log))
    superlink_log = Processes.log(fed.superlink)
    assert f"Uvicorn running on https://127.0.0.1:{fed.port}" in superlink_log, _tail(superlink_log)
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
