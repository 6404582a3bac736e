"""Whoever holds the coordinator's database rewrites its audit chain: edits an entry, deletes one,
reorders two, appends a forged one, drops the tail, re-chains after an edit, or leaves a torn last
line. ``fenji audit verify`` detects each (exit 8), against the chain's own hashes, the anchors the
key holder countersigned, and the key holder's latest anchor (a real key holder service); and the
key holder refuses to countersign a rewritten chain."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from coordinator.service import governance
from coordinator.service.accounts import add_account
from coordinator.service.chain import anchor_head
from coordinator.service.db import Account
from federation.audit import chain_entry, entry_line
from fenji.cli import app
from tests.coordinator.service.conftest import TASK, key_holder, make_service, registry_file  # noqa: F401

TAMPERS = {
    "edit": "broken at entry 5",
    "delete": "broken at entry 3",
    "reorder": "broken at entry 3",
    "forged append": "never countersigned",
    "drop the tail": "tail was dropped",
    "re-chain after an edit": "rewritten",
    "torn last line": "torn",
}


@pytest.fixture()
def coordinator_db(tmp_path, key_holder, registry_file):  # noqa: F811
    """A coordinator with six audited, anchored changes: four accounts, a promotion's two approvals."""
    service = make_service(tmp_path / "home", registry_file, key_holder=key_holder)
    with service.coordinator.sessions() as session:
        for who in ("test commissioner", "test commissioner2"):
            account = session.query(Account).filter_by(name=who).one()
            governance.approve(session, service.coordinator.registry, account, task=TASK, version="2", reason="fine")
            anchor_head(service.coordinator.sessions, service.coordinator.anchors)
    service.db = tmp_path / "home" / "coordinator" / "coordinator.db"
    return service


def verify(service):
    return CliRunner().invoke(app, ["audit", "verify"], env=service.env)


def _lines(con) -> dict[int, str]:
    return dict(con.execute("SELECT seq, line FROM audit_entries ORDER BY seq").fetchall())


def _rechain(con, lines: dict[int, str], start: int) -> None:
    """Recompute every hash from entry ``start`` on, as an attacker without any secret can."""
    last = json.loads(lines[start - 1]) if start > 1 else None
    for seq in range(start, max(lines) + 1):
        entry = json.loads(lines[seq])
        entry = chain_entry(last, actor=entry["actor"], action=entry["action"], details=entry["details"], at=entry["at"])
        con.execute("UPDATE audit_entries SET line = ? WHERE seq = ?", (entry_line(entry), seq))
        last = entry


def tamper(service, how: str) -> None:
    with sqlite3.connect(service.db) as con:
        lines = _lines(con)
        n = max(lines)
        if how == "edit":
            entry = json.loads(lines[5])
            entry["details"]["reason"] = "approved under pressure"
            con.execute("UPDATE audit_entries SET line = ? WHERE seq = 5", (entry_line(entry),))
        elif how == "delete":
            con.execute("DELETE FROM audit_entries WHERE seq = 3")
        elif how == "reorder":
            con.execute("UPDATE audit_entries SET line = ? WHERE seq = 3", (lines[4],))
            con.execute("UPDATE audit_entries SET line = ? WHERE seq = 4", (lines[3],))
        elif how == "forged append":
            forged = chain_entry(json.loads(lines[n]), actor="test commissioner", action="rollback",
                                 details={"task": TASK, "version": "1", "reasons": ["nobody said so"]})
            con.execute("INSERT INTO audit_entries (seq, line) VALUES (?, ?)", (forged["seq"], entry_line(forged)))
            con.execute("UPDATE audit_head SET seq = ?", (forged["seq"],))
        elif how == "drop the tail":  # and the stored anchors that would give it away
            con.execute("DELETE FROM audit_entries WHERE seq > ?", (n - 2,))
            con.execute("DELETE FROM audit_anchors WHERE seq > ?", (n - 2,))
            con.execute("UPDATE audit_head SET seq = ?", (n - 2,))
        elif how == "re-chain after an edit":
            entry = json.loads(lines[2])
            entry["details"]["role"] = "coordinator_admin"
            lines[2] = entry_line(entry)
            _rechain(con, lines, 2)
            con.execute("DELETE FROM audit_anchors")
        elif how == "torn last line":
            con.execute("UPDATE audit_entries SET line = ? WHERE seq = ?", (lines[n][:-30], n))


def test_the_untouched_chain_verifies(coordinator_db):
    result = verify(coordinator_db)
    assert result.exit_code == 0, result.output
    assert "intact: 6 entries" in result.output and "up to entry 6" in result.output


@pytest.mark.parametrize("how", sorted(TAMPERS))
def test_each_rewrite_is_detected(coordinator_db, how):
    tamper(coordinator_db, how)
    result = verify(coordinator_db)
    assert result.exit_code == 8, result.output
    assert TAMPERS[how] in " ".join(result.output.split()), result.output


@pytest.mark.parametrize("how", ["drop the tail", "re-chain after an edit"])
def test_the_key_holder_will_not_countersign_a_rewritten_chain(coordinator_db, how):
    """The attacker then makes a legitimate-looking change and asks for an anchor: refused, and the
    key holder ledgers the refusal."""
    tamper(coordinator_db, how)
    coordinator = coordinator_db.coordinator
    with coordinator.sessions() as session:
        add_account(session, name="late", role="data_scientist", actor="test")
    assert anchor_head(coordinator.sessions, coordinator.anchors) is None
    assert verify(coordinator_db).exit_code == 8


def test_no_change_is_made_on_a_torn_chain(coordinator_db):
    from federation.errors import AuditTamperedError

    tamper(coordinator_db, "torn last line")
    with coordinator_db.coordinator.sessions() as session:
        with pytest.raises(AuditTamperedError, match="torn"):
            add_account(session, name="never", role="data_scientist", actor="test")
    with coordinator_db.coordinator.sessions() as session:
        assert session.query(Account).filter_by(name="never").one_or_none() is None
