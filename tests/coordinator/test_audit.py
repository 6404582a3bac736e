import json

import pytest

from coordinator.audit import AuditLog, AuditTamperedError


def test_entries_chain_and_verify(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append(actor="coordinator", action="training-run", task="t", sites=["a", "b", "c"])
    log.append(actor="commissioner", action="approve", version="1")
    assert log.verify() == 2
    assert log.entries()[1]["prev"] == log.entries()[0]["hash"]


@pytest.mark.parametrize("tamper", ["edit", "delete"])
def test_changed_or_deleted_entry_is_detected(tmp_path, tamper):
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(3):
        log.append(actor="coordinator", action="training-run", round=i)
    lines = log.path.read_text().splitlines()
    if tamper == "edit":
        entry = json.loads(lines[1])
        entry["details"]["round"] = 99
        lines[1] = json.dumps(entry)
    else:
        del lines[1]
    log.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditTamperedError, match="entry 2"):
        log.verify()
