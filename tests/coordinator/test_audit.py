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


def _torn(log: AuditLog) -> bytes:
    """Three entries, the last cut off mid-write (as a crash or a full disk leaves it)."""
    for i in range(3):
        log.append(actor="coordinator", action="training-run", round=i)
    data = log.path.read_bytes()
    log.path.write_bytes(data[:-30])
    return data[:-30]


def test_a_torn_last_line_is_reported_as_a_torn_tail(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    _torn(log)
    with pytest.raises(AuditTamperedError, match="torn tail at entry 3"):
        log.verify()
    with pytest.raises(AuditTamperedError, match="torn tail at entry 3"):
        log.entries()


def test_append_refuses_to_build_on_a_torn_line_and_says_how_to_repair(tmp_path):
    from models.errors import FenjiError

    log = AuditLog(tmp_path / "audit.jsonl")
    torn = _torn(log)
    with pytest.raises(AuditTamperedError, match="refusing to append") as info:
        log.append(actor="commissioner", action="promotion", version="2")
    assert isinstance(info.value, FenjiError) and info.value.exit_code == 8
    assert f"head -n 2 {log.path}" in str(info.value)
    assert log.path.read_bytes() == torn  # nothing written
    with pytest.raises(AuditTamperedError):
        log.check_appendable()
    # The repair the message suggests: drop the cut-off line; the chain then continues.
    log.path.write_bytes(b"".join(line + b"\n" for line in torn.split(b"\n")[:2]))
    entry = log.append(actor="commissioner", action="promotion", version="2")
    assert entry["seq"] == 3 and log.verify() == 3


def test_a_line_that_is_not_json_breaks_the_chain_there(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(3):
        log.append(actor="coordinator", action="training-run", round=i)
    lines = log.path.read_text().splitlines()
    lines[1] = lines[1][:40]
    log.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditTamperedError, match="entry 2"):
        log.verify()


def _append_many(path: str, actor: str, n: int) -> None:
    log = AuditLog(path)
    for i in range(n):
        log.append(actor=actor, action="training-run", round=i)


def test_concurrent_writers_keep_one_chain(tmp_path):
    import multiprocessing

    path = str(tmp_path / "audit.jsonl")
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_many, args=(path, f"writer-{w}", 40)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert AuditLog(path).verify() == 160


def test_a_promotion_is_audited_before_it_takes_effect(tmp_path):
    import mlflow

    from coordinator.registry import promote
    from federation.errors import RegistryError

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("fenji-triage")
    client.create_model_version("fenji-triage", source=str(tmp_path), tags={"bundle-sha256": "c" * 64})
    log = AuditLog(tmp_path / "audit.jsonl")
    assert promote("triage", "1", tracking_uri=uri, audit=log, actor="commission:li") == "c" * 64
    # The registry refuses the move (a reserved alias): the decision stays on record, followed by its failure.
    with pytest.raises(RegistryError):
        promote("triage", "1", tracking_uri=uri, alias="latest", audit=log, actor="commission:li")
    actions = [(e["action"], e["details"].get("decision_seq")) for e in log.entries()]
    assert actions == [("promotion", None), ("promotion", None), ("promotion-failed", 2)]
    assert log.verify() == 3
