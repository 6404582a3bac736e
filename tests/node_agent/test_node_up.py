"""``fenji node up`` and ``fenji node approve-app / revoke-app``, through the real ``fenji`` CLI.

- A missing or wrong TLS file (CA certificate, the clinic's key) ends ``node up`` before anything
  starts, saying which file and what is wrong with it.
- One real start: the SuperNode (the SuperLink it points at is not there, so it keeps retrying),
  the launcher and the scoring service (on the last good models cached at the node) start; the
  status line says what runs; SIGINT (Ctrl-C) stops all three and frees their ports.
- Approving an app bundle by its file, by its folder or by its digest puts the same SHA-256 on the
  site's list, audited; revoking takes it off.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fenji.cli import app
from models.errors import ExitCode
from node_agent.budget import node_audit
from node_agent.policy import fab_digest, load_site_policy
from tests.node_agent.serve.trained_advisor import _models
from tests.node_agent.test_distribution import _cache_last_good

ROOT = Path(__file__).resolve().parents[2]
QUIET = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
         "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def fenji(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tls_material.py"), str(out), "--supernode", "clinic_a"],
                   check=True, capture_output=True)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(site: Path, certs: Path, *, ca: Path | None = None, key: Path | None = None, serve: bool = False) -> list[str]:
    return ["node", "up", "--site-dir", str(site), "--superlink", f"127.0.0.1:{_free_port()}",
            "--root-certificates", str(ca or certs / "ca.crt"), "--auth-key", str(key or certs / "clinic_a"),
            "--runtime-port", str(_free_port()), "--serve" if serve else "--no-serve"]


@pytest.mark.parametrize(("ca", "key", "message"), [
    ("missing.crt", "clinic_a", "TLS root certificate (--root-certificates) not found"),
    ("clinic_a.pub", "clinic_a", "is not a PEM certificate"),
    ("ca.crt", "clinic_a.pub", "is not an OpenSSH private key"),
    ("ca.crt", "ca.key", "is not an OpenSSH private key"),  # a PEM key, not the SuperNode's OpenSSH one
    ("ca.crt", "missing", "SuperNode authentication key (--auth-key) not found"),
])
def test_a_missing_or_wrong_tls_file_stops_node_up_before_anything_starts(tmp_path, certs, ca, key, message):
    site = tmp_path / "clinic_a"
    site.mkdir()
    result = fenji(*_up(site, certs, ca=certs / ca, key=certs / key))
    assert result.exit_code == ExitCode.SETTINGS and message in " ".join(result.stderr.split()), result.output
    assert not (site / "logs").exists()  # no process was started


def _wait_for(predicate, what: str, proc: subprocess.Popen, log: Path, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} (node up {'exited ' + str(proc.returncode) if proc.poll() is not None else 'runs'}):\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _start_node_up(tmp_path: Path, argv: list[str]) -> tuple[subprocess.Popen, Path]:
    """``fenji node up`` as an operator starts it (its own session), logging to ``node-up.log``."""
    log = tmp_path / "node-up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "FENJI_"))} | QUIET | {
        "FLWR_HOME": str(tmp_path / "flwr-home"), "FENJI_HOME": str(tmp_path / "no-coordinator")}
    with log.open("wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("fenji")), *argv], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, log


def test_node_up_starts_the_supernode_launcher_and_scoring_and_ctrl_c_stops_them(tmp_path, certs):
    site = tmp_path / "clinic_a"
    _cache_last_good(site, _models())  # the scoring service serves the last good set: no registry needed
    serve_port = _free_port()
    argv = _up(site, certs, serve=True) + ["--port", str(serve_port)]
    runtime_port = int(argv[argv.index("--runtime-port") + 1])
    proc, log = _start_node_up(tmp_path, argv)
    try:
        _wait_for(lambda: "Ctrl-C stops all" in log.read_text(errors="replace"), "no status line", proc, log)
        status = " ".join(log.read_text().split())
        assert "clinic_a: SuperNode → 127.0.0.1:" in status and "(TLS, key clinic_a)" in status, status
        assert "launcher runs 0 approved apps" in status and "No app is approved" in status, status
        assert f"scoring at http://127.0.0.1:{serve_port}/" in status, status
        _wait_for(lambda: _answers(serve_port), "the scoring service does not answer", proc, log)
        _wait_for(lambda: _listening(runtime_port), "the SuperNode's Runtime API is not up", proc, log)
        logs = site / "logs"
        _wait_for(lambda: "Fenji launcher: ClientApp tasks" in (logs / "launcher.log").read_text(errors="replace"),
                  "the launcher did not start", proc, log)
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:  # a failed check: stop it as an operator would, so that it stops its children
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    assert "Stopped the SuperNode, the launcher and the scoring service." in log.read_text(), log.read_text()
    assert not _listening(serve_port) and not _listening(runtime_port)
    assert "SuperNode terminated gracefully" in (site / "logs" / "supernode.log").read_text()


def test_approve_app_by_file_folder_or_digest_and_revoke(tmp_path):
    from flwr.cli.build import build_fab_from_disk

    site = tmp_path / "clinic_a"
    site.mkdir()
    fab_bytes = build_fab_from_disk(ROOT)
    with zipfile.ZipFile(io.BytesIO(fab_bytes)) as bundle:
        bundle.extractall(tmp_path / "app")  # a fixed copy: the working tree may change meanwhile
    fab = tmp_path / "fenji.fab"
    fab.write_bytes(fab_bytes)
    digest = fab_digest(fab_bytes)
    for how in (["--fab", fab], ["--fab", tmp_path / "app"]):
        result = fenji("node", "approve-app", "--site-dir", site, *how, "--by", "Dr Wang")
        assert result.exit_code == 0 and f"digest: {digest}" in result.stdout, result.output
    approved = load_site_policy(site).approved_apps
    assert list(approved) == [digest] and (approved[digest].app, approved[digest].approved_by) == ("fenji/fenji",
                                                                                                   "Dr Wang")
    other = "AB" * 32
    assert fenji("node", "approve-app", "--site-dir", site, "--digest", other).exit_code == 0
    assert set(load_site_policy(site).approved_apps) == {digest, other.lower()}
    shown = fenji("node", "policy", "--site-dir", site)
    assert shown.exit_code == 0 and f"Approved app: {digest} fenji/fenji 0.1.0" in shown.stdout, shown.output

    for bad, message in ((["--digest", "abc123"], "is not a SHA-256 digest"),
                         (["--fab", tmp_path / "nothing.fab"], "cannot read the app bundle"),
                         (["--fab", tmp_path / "fenji.fab", "--digest", digest], "exactly one"),
                         (["--fab", site], "cannot build a Flower app bundle")):
        result = fenji("node", "approve-app", "--site-dir", site, *bad)
        assert result.exit_code == ExitCode.SITE_DATA and message in result.stderr, (bad, result.output)
    (tmp_path / "not-a-fab").write_bytes(b"plain text")
    result = fenji("node", "approve-app", "--site-dir", site, "--fab", tmp_path / "not-a-fab")
    assert result.exit_code == ExitCode.SITE_DATA and "not a Flower app bundle" in result.stderr, result.output

    result = fenji("node", "revoke-app", "--site-dir", site, "--digest", digest)
    assert result.exit_code == 0, result.output
    assert set(load_site_policy(site).approved_apps) == {other.lower()}
    assert fenji("node", "revoke-app", "--site-dir", site, "--digest", digest).exit_code == ExitCode.SITE_DATA
    actions = [(e["action"], e["details"].get("fab")) for e in node_audit(site).entries()]
    assert actions == [("app-approved", digest), ("app-approved", digest), ("app-approved", other.lower()),
                       ("app-revoked", digest)]
    shutil.rmtree(tmp_path / "app")


def test_the_launcher_checks_the_bytes_it_would_install_and_the_site(tmp_path):
    from flwr.app import Context, RecordDict
    from flwr.supercore.fab import Fab

    from node_agent.errors import PolicyRefusal
    from node_agent.launcher import check_task

    site, other = tmp_path / "clinic_a", tmp_path / "clinic_b"
    site.mkdir()
    other.mkdir()
    content = b"the bundle's bytes"
    fab = Fab(fab_digest(b"what the run's metadata claims"), content, {})

    def context(site_dir: Path) -> Context:
        return Context(run_id=1, node_id=1, node_config={"site-dir": str(site_dir)}, state=RecordDict(), run_config={})

    with pytest.raises(PolicyRefusal, match="app not approved"):
        check_task(site, context(site), fab)
    assert fenji("node", "approve-app", "--site-dir", site, "--digest", fab.hash_str).exit_code == 0
    with pytest.raises(PolicyRefusal, match="app not approved"):  # the claimed hash buys nothing
        check_task(site, context(site), fab)
    assert fenji("node", "approve-app", "--site-dir", site, "--digest", fab_digest(content)).exit_code == 0
    assert check_task(site, context(site), fab) == fab_digest(content)
    with pytest.raises(PolicyRefusal, match="is not this launcher's"):  # another site's SuperNode
        check_task(site, context(other), fab)
    (site / "policy.json").write_text("{not json")
    with pytest.raises(PolicyRefusal, match="site policy cannot be read"):
        check_task(site, context(site), fab)


def test_a_node_up_killed_with_sigkill_takes_its_supernode_with_it(tmp_path, certs):
    """SIGKILL runs none of ``node up``'s handlers; the SuperNode must not keep taking tasks for a
    node that is down (its children ask the kernel for SIGTERM when their parent dies)."""
    site = tmp_path / "clinic_a"
    site.mkdir()
    argv = _up(site, certs)
    runtime_port = int(argv[argv.index("--runtime-port") + 1])
    proc, log = _start_node_up(tmp_path, argv)
    try:
        _wait_for(lambda: _listening(runtime_port), "the SuperNode's Runtime API is not up", proc, log)
        proc.kill()  # SIGKILL to node up alone, not to its process group
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while _listening(runtime_port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _listening(runtime_port), "the SuperNode outlived node up"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        # Never leave a process behind, even when the check failed: the SuperNode's argv names the site.
        subprocess.run(["pkill", "-KILL", "-f", str(site)], check=False)
