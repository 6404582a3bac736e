"""Whoever holds ``FENJI_HOME/audit.jsonl`` (the training log: runs started by ``fenji sim``, the demo,
deployment runs) rewrites it: edits a run and re-chains the rest, drops the last runs, or deletes
the file. The log's own hash chain cannot tell (an attacker recomputes every hash), and before the
log's head went under the service's countersigned chain ``fenji audit verify`` said "intact" to all
three (seen with ``coordinator.service.training_log.check`` stubbed out). Now each run's head is
recorded in the coordinator's chain and countersigned by a real key holder, and verify exits 8."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from coordinator.service.training_log import countersign
from coordinator.settings import load_coordinator_settings
from federation.audit import AuditLog, chain_entry, entry_line
from fenji.cli import app
from tests.coordinator.service.conftest import key_holder, make_service, registry_file  # noqa: F401

TAMPERS = {
    "re-chain after an edit": "re-chained",
    "drop the tail": "tail was dropped",
    "delete the file": "is gone",
}


def _run(log: AuditLog, version: int) -> None:
    log.append(actor="coordinator", action="training-run", task="referral_risk", rounds=15, encrypted=True,
               model="fenji-referral_risk", version=version)


@pytest.fixture()
def trained(tmp_path, key_holder, registry_file):  # noqa: F811
    """A coordinator running the service; three runs from the command line, each followed by what
    ``fenji sim`` does after its audit entry (``countersign``)."""
    service = make_service(tmp_path / "home", registry_file, key_holder=key_holder)
    settings = load_coordinator_settings(**{k.removeprefix("FENJI_").lower(): v for k, v in service.env.items()})
    log = AuditLog(settings.audit_path)
    for version in (1, 2, 3):
        _run(log, version)
        assert countersign(settings)
    assert not countersign(settings), "an unchanged head is recorded once"
    service.log_path = settings.audit_path
    return service


def verify(service):
    return CliRunner().invoke(app, ["audit", "verify"], env=service.env)


def tamper(path, how: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    if how == "re-chain after an edit":  # run 2 never happened: its version now says 1, hashes recomputed
        entries = [json.loads(line) for line in lines]
        entries[1]["details"]["version"] = 1
        last, out = entries[0], [lines[0]]
        for entry in entries[1:]:
            last = chain_entry(last, actor=entry["actor"], action=entry["action"], details=entry["details"],
                               at=entry["at"])
            out.append(entry_line(last))
        path.write_text("\n".join(out) + "\n", encoding="utf-8")
        assert AuditLog(path).verify() == 3, "the rewritten file passes its own chain check"
    elif how == "drop the tail":
        path.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
        assert AuditLog(path).verify() == 2
    elif how == "delete the file":
        path.unlink()


def test_the_untouched_training_log_verifies(trained):
    result = verify(trained)
    assert result.exit_code == 0, result.output
    assert "3 entries, 3 of them under heads the coordinator's chain recorded" in " ".join(result.output.split())


@pytest.mark.parametrize("how", sorted(TAMPERS))
def test_each_rewrite_of_the_training_log_is_detected(trained, how):
    tamper(trained.log_path, how)
    result = verify(trained)
    assert result.exit_code == 8, result.output
    assert TAMPERS[how] in " ".join(result.output.split()), result.output


def test_a_rewritten_log_is_never_recorded(trained):
    """After a rewrite, the next run's countersign refuses instead of blessing the new history."""
    from federation.errors import AuditTamperedError

    tamper(trained.log_path, "drop the tail")
    _run(AuditLog(trained.log_path), 4)
    settings = load_coordinator_settings(**{k.removeprefix("FENJI_").lower(): v for k, v in trained.env.items()})
    with pytest.raises(AuditTamperedError, match="entry 3 is not the one"):
        countersign(settings)
