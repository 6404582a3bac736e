"""The node's own hash-chained audit log records ingests and token changes, not only jobs."""

from __future__ import annotations

from typer.testing import CliRunner

from fenji.cli import app
from node_agent.budget import node_audit
from node_agent.cli_tokens import create_token, revoke_token
from simulation.synth import write_federation


def test_ingest_and_token_changes_land_in_the_node_audit_log(tmp_path):
    (name, path, mapping), *_ = write_federation(tmp_path / "exports", seed=3)
    site = tmp_path / "sites" / name
    args = ["node", "ingest", "--site-dir", str(site), "--task", "referral_risk", "--input", str(path)]
    result = CliRunner().invoke(app, args + (["--mapping", str(mapping)] if mapping else []))
    assert result.exit_code == 0, result.output
    admin = create_token(site, role="site_admin", name="admin one")
    doctor = create_token(site, role="doctor", name="Dr Wang")
    revoke_token(site, doctor.info.token_id)
    log = node_audit(site)
    assert log.verify() == 4
    entries = log.entries()
    assert [e["action"] for e in entries] == ["ingest", "token-created", "token-created", "token-revoked"]
    assert entries[0]["details"]["accepted"] > 0 and entries[0]["details"]["task"] == "referral_risk"
    assert entries[1]["details"]["token_id"] == admin.info.token_id
    assert entries[3]["details"]["name"] == "Dr Wang"
    assert all(doctor.token not in str(e) and admin.token not in str(e) for e in entries)  # never the secret
