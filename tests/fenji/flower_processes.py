"""Real Flower processes on loopback for the deployment tests: a SuperLink over TLS with SuperNode
authentication, one SuperNode per synthetic clinic, the key holder's service, and the ``flwr`` CLI.

Every process is started in a session of its own with its log under the test's folder, and stopped
(with its descendants: Flower's SuperExec and app processes start sessions of their own) at the end.
The commands are the ones in docs/deployment.md, "TLS and SuperNode authentication".
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
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
CONNECTION = "fenji-tls"
QUIET = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
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


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def tail(text: str, n: int = 3000) -> str:
    return text[-n:]


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
        if not proc.log_file.closed:  # type: ignore[attr-defined]
            proc.log_file.flush()  # type: ignore[attr-defined]
        return proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined]

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """SIGKILL the process and all its descendants at once: no handler runs, nothing is flushed."""
        for pid in [proc.pid, *descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.log_file.close()  # type: ignore[attr-defined]

    @staticmethod
    def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
        family = descendants(proc.pid)
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
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and not zombie(p) for p in family):
            time.sleep(0.2)
        for pid in [proc.pid, *family]:
            if Path(f"/proc/{pid}").exists() and not zombie(pid):
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


def wait_https(port: int, ca: Path, timeout: float = 60) -> None:
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


def wait_for_log(proc: subprocess.Popen, *texts: str, since: int = 0, deadline: float = 900) -> str:
    """Poll ``proc``'s log until ``texts`` appear in it in that order after its first ``since``
    characters; that part of the log (the deadline only stops a hang)."""
    end = time.monotonic() + deadline
    while True:
        log, at = Processes.log(proc)[since:], 0
        for text in texts:
            at = log.find(text, at)
            if at < 0:
                break
        if at >= 0 or time.monotonic() > end or proc.poll() is not None:
            return log
        time.sleep(0.1)


class Federation:
    """The SuperLink (``superlink``), each clinic's SuperNode (``supernodes``), the key holder's state."""

    def __init__(self, procs: Processes, work: Path, certs: Path, sites: dict[str, Path], port: int,
                 superlink: subprocess.Popen, keyholder: KeyHolderState):
        self.procs, self.work, self.certs, self.sites, self.port = procs, work, certs, sites, port
        self.superlink, self.keyholder = superlink, keyholder
        self.node_ids: dict[str, int] = {}
        self.supernodes: dict[str, subprocess.Popen] = {}
        self.address = f"127.0.0.1:{port}"
        self.flwr_home = work / "flwr-home"
        self._starts = 0

    def flwr(self, name: str, *args: str, timeout: float = 60) -> tuple[int | None, str]:
        return self.procs.run(name, ["flwr", *args], timeout=timeout, cwd=ROOT)

    def flwr_json(self, name: str, *args: str) -> dict:
        code, out = self.flwr(name, *args, "--format", "json")
        assert code == 0, f"flwr {' '.join(args)} failed ({code}):\n{tail(out)}"
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
        argv += ["--port", str(port or free_port())]
        if retries is not None:
            argv += ["--max-retries", str(retries)]
        argv += ["--node-config", f"site-dir='{self.sites[site]}'"]
        return argv

    def online_nodes(self) -> set[int]:
        nodes = self.flwr_json("supernode-ls", "supernode", "ls", CONNECTION)["nodes"]
        return {int(n["node-id"]) for n in nodes if n["status"] == "online"}

    def start_supernode(self, site: str) -> subprocess.Popen:
        """The clinic's SuperNode with its own registered key (a new log file each time it starts)."""
        self._starts += 1
        proc = self.procs.start(f"supernode-{site}-{self._starts}", self.supernode_argv(key=site, site=site),
                                cwd=self.work)
        self.supernodes[site] = proc
        return proc

    def kill_supernode(self, site: str) -> None:
        """SIGKILL the clinic's SuperNode and its app processes (a power cut, not a shutdown)."""
        Processes.kill(self.supernodes[site])

    def wait_online(self, sites: Iterable[str], deadline: float = 180) -> None:
        """Until exactly ``sites``' SuperNodes are online (a killed one goes offline after two missed
        heartbeats, about a minute); the deadline only stops a hang."""
        wanted, end = {self.node_ids[s] for s in sites}, time.monotonic() + deadline
        while (online := self.online_nodes()) != wanted:
            if time.monotonic() > end:
                pytest.fail(f"online {sorted(online)}, expected {sorted(wanted)} ({sorted(sites)}):\n"
                            + "\n".join(tail(Processes.log(p), 1500) for p in self.supernodes.values()))
            time.sleep(1)

    def only_online(self, sites: Sequence[str]) -> None:
        """Make exactly ``sites``' SuperNodes run (start those stopped, kill the others) and be online."""
        for site in self.sites:
            proc = self.supernodes.get(site)
            running = proc is not None and proc.poll() is None
            if site in sites and not running:
                self.start_supernode(site)
            elif site not in sites and running:
                self.kill_supernode(site)
        self.wait_online(sites)


def make_sites(root: Path, clinics: Sequence[ClinicProfile]) -> dict[str, Path]:
    spec = load_task("referral_risk")
    sites = {}
    for name, path, mapping in write_federation(root / "exports", clinics=list(clinics), seed=7, bad_rows=False):
        with SiteStore(root / "sites" / name) as store:
            ingest_file(store, spec, path, load_mapping(mapping))
        sites[name] = root / "sites" / name
    return sites


@contextlib.contextmanager
def start_federation(work: Path, clinics: Sequence[ClinicProfile], *, min_sites: int, rounds: int,
                     spare_keys: Sequence[str] = (), registered_spares: Sequence[str] = ()) -> Iterator[Federation]:
    """The key holder (``min_sites``), the clinics (enrolled, the plan approved for ``rounds``), the
    SuperLink over TLS with node authentication, each clinic's key registered under its name and its
    SuperNode online. ``spare_keys`` are key pairs made too (``registered_spares`` of them registered)."""
    flwr_home, logs = work / "flwr-home", work / "logs"
    flwr_home.mkdir()
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "FENJI_"))} | QUIET | {
        "FLWR_HOME": str(flwr_home), "FENJI_HOME": str(work / "coordinator")}
    procs = Processes(logs, env)
    key_holder = None
    names = [c.name for c in clinics]
    try:
        sites = make_sites(work, clinics)
        # The key holder: another party's service, with its own folder, started on its own; each
        # clinic is enrolled (the enrolment file goes into its site folder, as `fenji node enrol`
        # puts it) and the coordinator gets a token. Only the SuperLink's process is told where it is.
        state = KeyHolderState(work / "keyholder")
        state.init()
        for name, site_dir in sites.items():
            state.enrol(name, f"TEST-{name}").save(site_dir / ENROLMENT_FILE)
        # Each clinic's admin approves the plan (`fenji node approve`); a SuperNode runs nothing else.
        approve_at_sites(list(sites.values()), load_task("referral_risk"), rounds=rounds)
        key_holder = start_key_holder_service(state.home, min_sites=min_sites)
        coordinator_env = {"FENJI_KEYHOLDER_URL": key_holder.url,
                           "FENJI_KEYHOLDER_TOKEN": state.issue_token("coordinator")}
        certs = work / "certs"
        code, out = procs.run("make-tls", [sys.executable, str(MAKE_TLS), str(certs),
                                           *[a for s in [*names, *spare_keys] for a in ("--supernode", s)]],
                              timeout=60)
        assert code == 0, out
        port = free_port()
        (flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\nroot-certificates = "{certs / "ca.crt"}"\n\n'
            f'[superlink.no-ca]\naddress = "127.0.0.1:{port}"\n'
        )
        superlink = procs.start("superlink", [
            "flower-superlink", "--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile", str(certs / "server.pem"),
            "--ssl-keyfile", str(certs / "server.key"), "--enable-supernode-auth", "--port", str(port),
        ], cwd=work, extra_env=coordinator_env)
        wait_https(port, certs / "ca.crt")
        fed = Federation(procs, work, certs, sites, port, superlink, state)
        # Register the clinics' keys under their names (the coordinator then names a site that never answers).
        for name in [*names, *registered_spares]:
            answer = fed.flwr_json(f"register-{name}", "supernode", "register", str(certs / f"{name}.pub"),
                                   CONNECTION, "--name", name)
            assert answer["success"], answer
            fed.node_ids[name] = int(answer["node-id"])
        for name in names:
            fed.start_supernode(name)
        fed.wait_online(names, deadline=120)
        yield fed
    finally:
        procs.stop_all()
        if key_holder is not None:
            key_holder.stop()
