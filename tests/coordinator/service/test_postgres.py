"""End to end on PostgreSQL: a throwaway cluster from Debian's binaries (``initdb``/``pg_ctl``), the
coordinator's state in it over ``FENJI_COORDINATOR_DB``, a real server: four-eyes promotion,
rollback, concurrent audited changes on one chain, ``fenji audit verify``, and an edit detected."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coordinator.service import create_app
from coordinator.service.accounts import add_account
from coordinator.service.chain import anchor_head, read_chain
from fenji.cli import app
from tests.coordinator.service.conftest import TASK, make_service, running

PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL cluster in a temporary folder on a free loopback port; its URL. PostgreSQL refuses
    to run as root, so as root the cluster runs as Debian's ``postgres`` user."""
    if not PG_BINS:
        pytest.skip("PostgreSQL's server binaries are not installed (/usr/lib/postgresql/*/bin/initdb; Debian "
                    "package `postgresql`, which the README's set-up line installs for .ci/run)")
    bin_dir = PG_BINS[-1].parent
    root = Path(tempfile.mkdtemp(prefix="fenji-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "fenji", "--auth=trust", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data)]
    started = subprocess.run([*pg_ctl, "-l", str(root / "server.log"), "-w", "-t", "120", "-o", options, "start"],
                             capture_output=True, text=True)
    assert started.returncode == 0, started.stdout + started.stderr + (root / "server.log").read_text()
    try:
        yield f"postgresql+psycopg://fenji@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_governance_and_audit_on_postgresql(tmp_path, key_holder, registry_file, postgres_url):
    service = make_service(tmp_path / "home", registry_file, key_holder=key_holder, database_url=postgres_url)
    assert service.coordinator.sessions.kw["bind"].dialect.name == "postgresql"
    approve = f"/api/v1/models/{TASK}/versions/{{}}/approve"
    with running(create_app(service.coordinator)) as service.base_url:
        for version in ("1", "3"):
            with service.client("commissioner") as client:
                assert client.post(approve.format(version), json={"reason": "first pair of eyes"}).status_code == 200
                refused = client.post(approve.format(version), json={"reason": "mine again"})
                assert refused.status_code == 409 and refused.json()["error"] == "FourEyes"
            with service.client("commissioner2") as client:
                assert client.post(approve.format(version), json={"reason": "second pair"}).json()["promotion"][
                    "status"] == "applied"
        assert service.alias() == "3"
        with service.client("commissioner") as client:
            back = client.post(f"/api/v1/models/{TASK}/rollback", json={"version": "1", "reason": "clinic_b"})
            assert back.status_code == 200, back.text
        assert service.alias() == "1"

        # Eight changes at once from eight threads: one chain, no fork, no lost entry.
        def add(n: int) -> None:
            with service.coordinator.sessions() as session:
                add_account(session, name=f"concurrent {n}", role="data_scientist", actor="test")

        threads = [threading.Thread(target=add, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        anchor_head(service.coordinator.sessions, service.coordinator.anchors)
        with service.coordinator.sessions() as session:
            entries = read_chain(session)
        assert sum(e["action"] == "account-added" for e in entries) == 4 + 8
        assert [e["action"] for e in entries if e["action"] in ("promotion", "rollback")] == [
            "promotion", "promotion", "rollback"]
        with service.client("admin") as client:
            assert client.get("/api/v1/audit/verify").json()["ok"]

    result = CliRunner().invoke(app, ["audit", "verify"], env=service.env)
    assert result.exit_code == 0, result.output
    assert f"intact: {len(entries)} entries" in result.output

    import psycopg

    with psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql")) as con:
        line = con.execute("SELECT line FROM audit_entries WHERE seq = 5").fetchone()[0]
        entry = json.loads(line)
        entry["details"]["reason"] = "never said"
        con.execute("UPDATE audit_entries SET line = %s WHERE seq = 5", (json.dumps(entry) + "\n",))
    result = CliRunner().invoke(app, ["audit", "verify"], env=service.env)
    assert result.exit_code == 8 and "broken at entry 5" in result.output, result.output
