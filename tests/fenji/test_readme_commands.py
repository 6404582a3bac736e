"""The README's "Using it" commands work after `fenji demo`, all against one registry.

The demo, `fenji models promote` and `fenji node serve` each used to look in a different place (the
demo's own folder, ``./.fenji``, and MLflow artifacts in ``./mlruns``), so the README's promote
failed right after a demo. Here every command runs as a real process in a fresh folder with
``FENJI_HOME`` unset: everything must land in ``./.fenji`` and nothing in ``./mlruns``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("triage", "diagnosis", "referral_risk")


def _fenji() -> str:
    found = Path(sys.executable).with_name("fenji")
    return str(found) if found.exists() else (shutil.which("fenji") or "fenji")


def readme_using_it_commands() -> list[list[str]]:
    """The ``fenji ...`` commands of the README's "Using it" block, each split like a shell would."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Using it", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "no bash block in the README's 'Using it' section"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [words for words in (shlex.split(line, comments=True) for line in lines) if words]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def after_demo(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("operator")
    env = {k: v for k, v in os.environ.items() if k not in ("FENJI_HOME", "FENJI_MLFLOW_URI")}
    env["PYTHONUNBUFFERED"] = "1"

    def fenji(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([_fenji(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)

    # One round per task, and no *_text variants, keep this short; the demo still ends by approving
    # all three and a login (the full demo is tests/fenji/test_e2e_clinical_demo.py).
    demo = fenji("demo", "--rounds", "1", "--text-rounds", "0", timeout=900)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    return cwd, env, fenji, demo


def test_the_demo_registers_in_fenji_home_and_promotes_what_it_registered(after_demo):
    cwd, _, _, demo = after_demo
    home = cwd / ".fenji"
    assert (home / "mlflow.db").is_file() and (home / "artifacts").is_dir()
    assert not (cwd / "mlruns").exists(), "MLflow artifacts landed in the working folder"
    assert (cwd / "fenji-demo" / ".fenji-demo").is_file()  # the demo marks the folder it made
    assert not (cwd / "fenji-demo" / "coordinator").exists()
    registered = {t: json.loads((cwd / "fenji-demo" / f"demo-{t}.json").read_text())["registered"]["version"]
                  for t in TASKS}
    entries = [json.loads(line) for line in (home / "audit.jsonl").read_text().splitlines()]
    promoted = {e["details"]["task"]: e["details"]["version"] for e in entries if e["action"] == "promotion"}
    assert promoted == registered
    assert "log in with the doctor token" in demo.stdout


def test_readme_using_it_commands_run_after_the_demo(after_demo):
    from coordinator.audit import AuditLog

    cwd, _, fenji, _ = after_demo
    commands = readme_using_it_commands()
    by_name = {" ".join(c[1:3] if c[1] in ("coordinator", "node", "keyholder") else c[1:2]): c for c in commands}
    assert {"tasks", "coordinator promote"} <= set(by_name), by_name

    tasks = fenji(*by_name["tasks"][1:])
    assert tasks.returncode == 0, tasks.stderr
    assert all(t in tasks.stdout for t in TASKS)

    promote = fenji(*by_name["coordinator promote"][1:])  # exactly the README's line
    assert promote.returncode == 0, promote.stdout + promote.stderr
    registry = f"sqlite:///{(cwd / '.fenji' / 'mlflow.db').resolve()}"
    assert f"Model registry: {registry}" in promote.stdout
    log = AuditLog(cwd / ".fenji" / "audit.jsonl")
    log.verify()
    actions = [entry["action"] for entry in log.entries()]  # the demo's surveillance step may add its own entry
    assert actions.count("training-run") == 3 and actions.count("promotion") == 3 + 1, actions  # demo's + README's
    assert not (cwd / "mlruns").exists()

    # A clinic's own line, and the key holder's view, exactly as the README shows them.
    from node_agent.budget import node_audit
    from node_agent.policy import load_site_policy

    site = cwd / "fenji-demo" / "sites" / "clinic_01_urban"
    for name in ("node approve", "node policy", "node status", "keyholder show", "keyholder ledger"):
        result = fenji(*by_name[name][1:])
        assert result.returncode == 0, (name, result.stdout + result.stderr)
    policy = load_site_policy(site)
    assert policy.dp.enabled and policy.dp.epsilon_per_run == 1
    assert {p.task for p in policy.approved_plans.values()} >= set(TASKS)
    actions = [e["action"] for e in node_audit(site).entries()]
    assert "plan-approved" in actions and "policy-changed" in actions and "job-accepted" in actions
    assert "chain intact" in fenji(*by_name["keyholder ledger"][1:]).stdout


def test_the_demo_says_how_a_commissioner_logs_in_and_those_commands_work(after_demo):
    """The demo's last lines: the coordinator's service, a commissioner's token, its console."""
    _, _, fenji, demo = after_demo
    assert "log in with a commissioner token" in demo.stdout and "fenji coordinator serve" in demo.stdout
    assert fenji("coordinator", "init").returncode == 0
    added = fenji("coordinator", "account", "add", "--role", "commissioner", "--name", "Commissioner A")
    assert added.returncode == 0 and "fco_" in added.stdout + added.stderr, added.stdout + added.stderr
    # From then on the shortcut is closed: promotion goes through two commissioners.
    refused = fenji("coordinator", "promote", "--task", "triage", "--version", "1", "--actor", "x")
    assert refused.returncode != 0 and "two different commissioners" in " ".join(refused.stderr.split())


def test_node_serve_uses_the_same_registry_and_finds_the_promoted_versions(after_demo, monkeypatch):
    from node_agent.distribution import ModelDistribution
    from node_agent.settings import NodeSettings

    cwd, env, _, _ = after_demo
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("FENJI_HOME", raising=False)
    monkeypatch.delenv("FENJI_MLFLOW_URI", raising=False)
    site = cwd / "fenji-demo" / "sites" / "clinic_01_urban"
    advisor = ModelDistribution(site, NodeSettings().tracking_uri).fetch()  # `node serve`'s default registry
    registered = {t: json.loads((cwd / "fenji-demo" / f"demo-{t}.json").read_text())["registered"]["version"]
                  for t in TASKS}
    assert {t: r.version for t, r in advisor.models.items()} == registered

    # And the real command: it names the registry it uses and serves the promoted versions.
    port = _free_port()
    proc = subprocess.Popen([_fenji(), "node", "serve", "--site-dir", str(site), "--port", str(port)], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    serving = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Serving"):
                serving.set()
        serving.set()  # the process ended without serving

    threading.Thread(target=read, daemon=True).start()
    try:
        serving.wait(timeout=300)
    finally:
        proc.kill()
        proc.wait()
    text = "".join(lines)
    assert f"Model registry: sqlite:///{(cwd / '.fenji' / 'mlflow.db').resolve()}" in text, text
    for task, version in registered.items():
        assert f"{task} v{version}" in text, text
    assert not (cwd / "mlruns").exists()
