"""A clinic rewrites its node audit log after a run (edits an entry and re-chains it, or drops its
last entries): on its own the rewritten log verifies, since the chain is re-hashed. The heads the node
reported with its replies, recorded in the coordinator's training-run entries, give it away:
``fenji audit heads`` finds a reported head missing from the node's chain."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from federation.audit import AuditLog
from federation.errors import AuditTamperedError
from fenji.audit_heads import check_reported_heads
from fenji.cli import app


def _node_and_coordinator(tmp_path):
    site = tmp_path / "clinic_a"
    site.mkdir()
    node = AuditLog(site / "node-audit.jsonl")
    coordinator = AuditLog(tmp_path / "home" / "audit.jsonl")
    for run in range(3):
        node.append(actor="node", action="job-accepted", run_id=f"run-{run}")
        node.append(actor="node", action="dp-charge", run_id=f"run-{run}", epsilon=1.0)
        coordinator.append(actor="coordinator", action="training-run", task="triage", version=str(run + 1),
                           site_audit_heads={"clinic_a": node.head(), "clinic_b": "f" * 64})
    node.append(actor="site-admin", action="plan-approved", task="triage")  # after the last run
    return site, node, coordinator


def _rechain(path, entries):
    """What a node with write access could do: rewrite and re-hash the whole chain."""
    path.unlink()
    log = AuditLog(path)
    for entry in entries:
        log.append(actor=entry["actor"], action=entry["action"], **entry["details"])
    return log


def test_an_intact_node_log_holds_every_head_it_reported(tmp_path):
    _, node, coordinator = _node_and_coordinator(tmp_path)
    report = check_reported_heads(node, coordinator, "clinic_a")
    assert [row["position"] for row in report.checked] == [2, 4, 6]


@pytest.mark.parametrize("rewrite", ["edit and re-chain", "drop the last run's entries"])
def test_a_node_log_rewritten_after_a_run_is_detected(tmp_path, rewrite):
    site, node, coordinator = _node_and_coordinator(tmp_path)
    entries = node.entries()
    if rewrite == "edit and re-chain":
        entries[1]["details"]["epsilon"] = 0.1  # the clinic hides how much budget it spent
        kept = entries
    else:
        kept = entries[:4]
    rewritten = _rechain(site / "node-audit.jsonl", kept)
    assert rewritten.verify() == len(kept)  # on its own, the rewritten log looks fine
    with pytest.raises(AuditTamperedError, match="no longer holds the head"):
        check_reported_heads(rewritten, coordinator, "clinic_a")


def test_the_command_says_which_run_and_exits_8(tmp_path, monkeypatch):
    site, node, _ = _node_and_coordinator(tmp_path)
    monkeypatch.setenv("FENJI_HOME", str(tmp_path / "home"))
    ok = CliRunner().invoke(app, ["audit", "heads", "--site-dir", str(site)])
    assert ok.exit_code == 0 and "holds all 3 head(s)" in ok.output, ok.output
    entries = node.entries()
    entries[0]["details"]["run_id"] = "run-x"
    _rechain(site / "node-audit.jsonl", entries)
    bad = CliRunner().invoke(app, ["audit", "heads", "--site-dir", str(site)])
    assert bad.exit_code == 8 and "triage version 1" in bad.output, bad.output
    assert json.loads((tmp_path / "home" / "audit.jsonl").read_text().splitlines()[0])["action"] == "training-run"
