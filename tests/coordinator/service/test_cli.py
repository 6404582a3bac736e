"""The service's commands: init makes the first admin once, account add prints a token once and stores
only its hash, every change is audited; and `fenji coordinator serve` as its own process."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time

import httpx
from typer.testing import CliRunner

from fenji.cli import app
from keyholder.process import free_port

TOKEN = re.compile(r"^fco_[A-Za-z0-9_-]{43}$", re.M)


def test_init_account_add_and_verify(tmp_path):
    env = {"FENJI_HOME": str(tmp_path / "home"), "FENJI_KEYHOLDER_URL": "", "FENJI_COORDINATOR_DB": ""}
    env = {k: v for k, v in env.items() if v}
    runner = CliRunner()
    first = runner.invoke(app, ["coordinator", "init"], env=env)
    assert first.exit_code == 0, first.output
    (admin,) = TOKEN.findall(first.output)
    again = runner.invoke(app, ["coordinator", "init"], env=env)
    assert again.exit_code == 0 and not TOKEN.findall(again.output)  # the first admin is made once
    added = runner.invoke(app, ["coordinator", "account", "add", "--role", "commissioner", "--name", "Li"], env=env)
    assert added.exit_code == 0, added.output
    (token,) = TOKEN.findall(added.output)
    assert runner.invoke(app, ["coordinator", "account", "add", "--role", "commissioner", "--name", "Li"],
                         env=env).exit_code != 0
    db = tmp_path / "home" / "coordinator" / "coordinator.db"
    with sqlite3.connect(db) as con:
        stored = " ".join(str(v) for row in con.execute("SELECT * FROM accounts") for v in row)
        actions = [line for (line,) in con.execute("SELECT line FROM audit_entries ORDER BY seq")]
    assert admin not in stored and token not in stored
    assert ['"account-added"' in a for a in actions] == [True, True]
    verified = runner.invoke(app, ["audit", "verify"], env=env)
    assert verified.exit_code == 0 and "intact: 2 entries" in verified.output, verified.output


def test_serve_runs_as_its_own_process(tmp_path):
    port = free_port()
    env = {**os.environ, "FENJI_HOME": str(tmp_path / "home")}
    env.pop("FENJI_KEYHOLDER_URL", None)
    env.pop("FENJI_COORDINATOR_DB", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "fenji.cli", "coordinator", "serve", "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v1/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        (admin,) = TOKEN.findall(log.read_text())
        me = httpx.get(f"http://127.0.0.1:{port}/api/v1/me", headers={"Authorization": f"Bearer {admin}"})
        assert me.json()["role"] == "coordinator_admin"
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/me").status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=30)
