"""``fenji node up``: the clinic's SuperNode, its app launcher and its scoring service, started together.

Three processes make one clinic node:

- **the SuperNode** (``flower-supernode``): TLS to the SuperLink with the clinic's CA certificate,
  the clinic's own authentication key, ``--isolation process`` (it runs no app code itself) and the
  site folder as its only node config;
- **the launcher** (``python -m node_agent.launcher superexec``): takes the SuperNode's tasks and runs
  an app bundle only if the site approved its SHA-256 (``fenji node approve-app``);
- **the scoring service** (what ``fenji node serve`` runs), in this process.

Every file is checked before anything starts, so a wrong path or a file that is not a certificate or
a key ends the command at once with what is wrong. One status line says what runs; Ctrl-C stops all
three; if the SuperNode or the launcher ends, the others are stopped and the command fails with the
end of its log. The processes' logs are under ``<site>/logs/``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from federation.errors import SettingsError
from models.errors import FenjiError, first_line
from node_agent.errors import DemoNoiseSeedError, SiteDataError
from node_agent.paths import input_file, site_folder
from node_agent.policy import load_site_policy

__all__ = ["NodeProcesses", "check_tls_files", "up_command"]

console = Console()
LOG_DIR = "logs"
_STOP_GRACE_SECONDS = 10.0


def check_tls_files(root_certificates: Path, auth_key: Path) -> None:
    """The CA certificate must be PEM certificates and the key an OpenSSH EC private key (what the
    SuperNode reads); else a ``SettingsError`` naming the file and what is wrong with it."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    input_file(root_certificates, "TLS root certificate (--root-certificates)", SettingsError)
    input_file(auth_key, "SuperNode authentication key (--auth-key)", SettingsError)
    try:
        x509.load_pem_x509_certificates(root_certificates.read_bytes())
    except ValueError as exc:
        raise SettingsError(f"the TLS root certificate {root_certificates} is not a PEM certificate "
                            f"({first_line(exc)}); give the CA certificate the coordinator sent (ca.crt)") from exc
    try:
        key = load_ssh_private_key(auth_key.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"the SuperNode authentication key {auth_key} is not an OpenSSH private key "
                            f"({first_line(exc)}); give the clinic's private key (not the .pub)") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SettingsError(f"the SuperNode authentication key {auth_key} is a {type(key).__name__}; Flower "
                            "needs an EC key (scripts/make_tls_material.py makes one)")


def _flower_supernode() -> str:
    beside = Path(sys.executable).with_name("flower-supernode")
    found = str(beside) if beside.exists() else shutil.which("flower-supernode")
    if not found:
        raise SettingsError("flower-supernode is not installed next to this Python (pip install flwr)")
    return found


def _free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    """In the child, before it runs: on Linux, SIGTERM it when ``fenji node up`` dies, even by SIGKILL
    (which runs no handler of ours), so that no SuperNode keeps taking tasks for a node that is down."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class NodeProcesses:
    """The SuperNode and the launcher, each in a session of its own, logging to ``<site>/logs``."""

    def __init__(self, site_dir: Path) -> None:
        self.log_dir = site_dir / LOG_DIR
        self.log_dir.mkdir(exist_ok=True)
        self.started: dict[str, tuple[subprocess.Popen, IO[bytes]]] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                # Only a prctl call, libc resolved beforehand: safe in the forked child.
                                start_new_session=True, preexec_fn=_die_with_parent)  # noqa: PLW1509
        self.started[name] = (proc, log)
        return proc

    def log_tail(self, name: str, lines: int = 8) -> str:
        text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def ended(self) -> tuple[str, int] | None:
        """The first process that has ended, with its exit code."""
        for name, (proc, _) in self.started.items():
            if proc.poll() is not None:
                return name, proc.returncode
        return None

    def stop(self) -> None:
        """SIGTERM to each process group (Flower's app processes included), SIGKILL after a grace period."""
        for proc, _ in self.started.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        for proc, log in self.started.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
            log.close()


def _watch(nodes: NodeProcesses, stop: threading.Event, on_end) -> None:
    """Say when the SuperNode has joined the federation; call ``on_end`` when a process ends."""
    joined = False
    while not stop.wait(0.5):
        if not joined and "SuperNode ID:" in (nodes.log_dir / "supernode.log").read_text(errors="replace"):
            joined = True
            node_id = [line for line in nodes.log_tail("supernode", 200).splitlines() if "SuperNode ID:" in line]
            console.print(f"[green]SuperNode joined the federation[/] ({escape((node_id or [''])[-1].strip())})",
                          soft_wrap=True)
        if (ended := nodes.ended()) is not None:
            on_end(*ended)
            return


def up_command(
    site_dir: Annotated[Path, typer.Option(help="The clinic's site folder (policy.json, its DuckDB, its models).")],
    superlink: Annotated[str, typer.Option(help="The coordinator's SuperLink, host:port.")],
    root_certificates: Annotated[Path, typer.Option(help="The CA certificate the SuperLink's TLS certificate is "
                                                         "signed with (ca.crt).")],
    auth_key: Annotated[Path, typer.Option(help="This clinic's SuperNode private key (OpenSSH EC key); the "
                                                "coordinator registered its .pub.")],
    runtime_port: Annotated[int, typer.Option(min=1, max=65535, help="Loopback port of the SuperNode's Runtime "
                                                                     "API, where the launcher takes tasks.")] = 9094,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Also run the scoring service.")] = True,
    registry: Annotated[str | None, typer.Option(help="MLflow URI of the model registry (as for node serve).")] = None,
    alias: Annotated[str, typer.Option(help="The registry alias of approved versions.")] = "production",
    host: Annotated[str | None, typer.Option(help="Scoring service bind address (default FENJI_SERVE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Scoring service port.")] = None,
) -> None:
    """Start the clinic's node: its SuperNode (TLS, its key, apps only through the launcher), the launcher
    that runs only app bundles this site approved, and the scoring service. Ctrl-C stops them all."""
    site_dir = site_folder(site_dir, SiteDataError, must_exist=True).resolve()
    policy = load_site_policy(site_dir)  # a broken policy stops the node before it starts
    if policy.dp.noise_seed is not None:
        raise DemoNoiseSeedError(
            f"{site_dir.name}'s policy seeds its DP noise (dp.noise_seed = {policy.dp.noise_seed}), which only the "
            "synthetic demo and tests may do: whoever knows the seed can predict the noise and subtract it. Remove "
            "\"noise_seed\" from the \"dp\" section of its policy.json before this clinic joins a federation")
    check_tls_files(root_certificates, auth_key)
    if not _free("127.0.0.1", runtime_port):
        raise SettingsError(f"port {runtime_port} on 127.0.0.1 is in use: give --runtime-port another one")
    from node_agent.settings import load_node_settings

    settings = load_node_settings()
    host, port = host or settings.serve_host, port or settings.serve_port
    if serve and not _free(host, port):
        raise SettingsError(f"the scoring service's port {host}:{port} is in use: give --port another one")
    app_ = None
    if serve:
        app_, models = _scoring_app(site_dir, registry or settings.existing_tracking_uri(must_exist=False), alias,
                                    settings)
    supernode = [_flower_supernode(), "--superlink", superlink, "--root-certificates", str(root_certificates.resolve()),
                 "--auth-supernode-private-key", str(auth_key.resolve()), "--isolation", "process",
                 "--host", "127.0.0.1", "--port", str(runtime_port), "--node-config", f"site-dir='{site_dir}'"]
    launcher = [sys.executable, "-m", "node_agent.launcher", "superexec", "--site-dir", str(site_dir),
                "--runtime-api-address", f"127.0.0.1:{runtime_port}", "--insecure", "--parent-pid", str(os.getpid())]
    nodes = NodeProcesses(site_dir)
    ended: list[tuple[str, int]] = []
    server = None
    stop = threading.Event()
    try:
        nodes.start("supernode", supernode)
        nodes.start("launcher", launcher)
        apps = len(policy.approved_apps)
        console.print(
            f"[bold]{escape(site_dir.name)}[/]: SuperNode → {escape(superlink)} (TLS, key {escape(auth_key.name)}); "
            f"launcher runs {apps} approved app{'s' * (apps != 1)}, {len(policy.approved_plans)} approved plan(s); "
            + (f"scoring at http://{host}:{port}/ ({escape(models)})" if serve else "no scoring service")
            + f". Logs: {nodes.log_dir}. Ctrl-C stops all.", soft_wrap=True)
        if not apps:
            console.print("[yellow]No app is approved: every task is refused (`fenji node approve-app`).[/]")
        if serve:
            import uvicorn

            server = uvicorn.Server(uvicorn.Config(app_, host=host, port=port, log_level="warning"))

        def on_end(name: str, code: int) -> None:
            ended.append((name, code))
            if server is not None:
                server.should_exit = True
            else:
                os.kill(os.getpid(), signal.SIGINT)

        watcher = threading.Thread(target=_watch, args=(nodes, stop, on_end), daemon=True)
        watcher.start()
        if server is not None:
            server.run()
        else:
            while watcher.is_alive():
                watcher.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        nodes.stop()
    if ended:
        name, code = ended[0]
        raise SettingsError(f"the {name} ended (exit code {code}); all stopped. The end of its log "
                            f"({nodes.log_dir / (name + '.log')}):\n{nodes.log_tail(name)}")
    console.print("Stopped the SuperNode, the launcher" + (" and the scoring service." if serve else "."))


def _scoring_app(site_dir: Path, uri: str | None, alias: str, settings) -> tuple[object, str]:
    """The scoring service's app, as ``fenji node serve`` builds it, and where its models came from."""
    from node_agent.distribution import ModelDistribution
    from node_agent.serve import AdvisorHolder, create_app

    distribution = ModelDistribution(site_dir, uri, alias=alias)
    try:
        advisor = distribution.load()
    except FenjiError as exc:
        raise SettingsError(f"the scoring service has no model to serve ({first_line(exc)}); start with "
                            "--no-serve until the first model is approved") from exc
    app_ = create_app(AdvisorHolder(advisor), site_dir=site_dir, provider=distribution.fetch,
                      max_batch=settings.serve_max_batch, busy_timeout=settings.serve_busy_timeout)
    return app_, distribution.status
