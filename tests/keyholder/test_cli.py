"""``fenji keyholder …``, run through the real root command."""

from __future__ import annotations

import re
import stat

import pytest
from typer.testing import CliRunner

from federation.identity import load_enrolment
from fenji.cli import app
from keyholder import KeyHolderState


@pytest.fixture()
def run(tmp_path, monkeypatch):
    """``run(*args)``: ``fenji keyholder <args> --home <tmp>/kh``, wide enough that tables do not wrap."""
    monkeypatch.setenv("COLUMNS", "240")
    monkeypatch.delenv("FENJI_MIN_SITES", raising=False)
    home = tmp_path / "kh"

    def invoke(*args: str):
        return CliRunner().invoke(app, ["keyholder", *args, "--home", str(home)])

    invoke.home = home
    return invoke


def test_init_makes_the_keys_once(run):
    first = run("init")
    assert first.exit_code == 0, first.output
    fingerprint = KeyHolderState(run.home).keyholder_id
    assert "Made the key holder's keys" in first.stdout and fingerprint in first.stdout
    second = run("init")
    assert second.exit_code == 0 and "already there" in second.stdout and fingerprint in second.stdout


def test_enrol_writes_an_owner_only_enrolment_for_the_site(run, tmp_path):
    run("init")
    out = tmp_path / "handover" / "clinic_a.json"
    result = run("enrol", "--site-id", "clinic_a", "--institution", "INST-1", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    enrolment = load_enrolment(out)
    state = KeyHolderState(run.home)
    assert (enrolment.site_id, enrolment.institution, enrolment.keyholder) == ("clinic_a", "INST-1", state.keyholder_id)
    assert state.site_keys(["clinic_a"]) == {"clinic_a": enrolment.site_key_bytes}
    assert "fenji node enrol" in result.stdout and "out of band" in result.stdout


def test_enrolling_a_clinic_twice_fails(run, tmp_path):
    run("init")
    run("enrol", "--site-id", "clinic_a", "--institution", "INST-1", "--out", str(tmp_path / "a.json"))
    twin = run("enrol", "--site-id", "clinic_a2", "--institution", "INST-1", "--out", str(tmp_path / "a2.json"))
    assert twin.exit_code == 6 and "already enrolled" in twin.stderr
    assert not (tmp_path / "a2.json").exists()
    assert list(KeyHolderState(run.home).enrolments()) == ["clinic_a"]


def test_enrol_never_overwrites_an_existing_file(run, tmp_path):
    run("init")
    out = tmp_path / "a.json"
    out.write_text("someone's secret")
    result = run("enrol", "--site-id", "clinic_a", "--institution", "INST-1", "--out", str(out))
    assert result.exit_code != 0 and out.read_text() == "someone's secret"
    assert KeyHolderState(run.home).enrolments() == {}


def test_token_issue_prints_a_token_the_key_holder_recognises_until_revoked(run):
    run("init")
    result = run("token", "issue", "--name", "city-coordinator")
    assert result.exit_code == 0, result.output
    token = re.search(r"fkh_[A-Za-z0-9_-]+", result.stdout).group(0)
    state = KeyHolderState(run.home)
    assert state.caller_of(token) == "city-coordinator"
    assert run("token", "revoke", "--name", "city-coordinator").exit_code == 0
    assert state.caller_of(token) is None


def test_show_lists_the_sites_and_never_their_keys(run, tmp_path, monkeypatch):
    run("init")
    run("enrol", "--site-id", "clinic_a", "--institution", "INST-1", "--out", str(tmp_path / "a.json"))
    monkeypatch.setenv("FENJI_MIN_SITES", "5")
    result = run("show")
    assert result.exit_code == 0, result.output
    assert "clinic_a" in result.stdout and "INST-1" in result.stdout and "8192" in result.stdout
    assert "5 (FENJI_MIN_SITES, set only here)" in result.stdout
    enrolment = load_enrolment(tmp_path / "a.json")
    assert enrolment.site_key not in result.output and enrolment.site_key[:12] not in result.output
    monkeypatch.setenv("FENJI_MIN_SITES", "0")
    bad = run("show")
    assert bad.exit_code == 9 and "FENJI_MIN_SITES" in bad.stderr


def test_revoke_site_removes_it_from_the_key_holder(run, tmp_path):
    run("init")
    run("enrol", "--site-id", "clinic_a", "--institution", "INST-1", "--out", str(tmp_path / "a.json"))
    assert run("revoke-site", "--site-id", "clinic_a").exit_code == 0
    assert KeyHolderState(run.home).enrolments() == {}
    assert run("revoke-site", "--site-id", "clinic_a").exit_code == 6


def test_ledger_checks_the_chain_before_showing_it(run, tmp_path):
    run("init")
    run("enrol", "--site-id", "clinic_a", "--institution", "INST-1", "--out", str(tmp_path / "a.json"))
    result = run("ledger")
    assert result.exit_code == 0, result.output
    assert "chain intact: 2 entries" in result.stdout and "enrol" in result.stdout
    ledger = run.home / "ledger.jsonl"
    ledger.write_text(ledger.read_text().replace("INST-1", "INST-2"))
    tampered = run("ledger")
    assert tampered.exit_code == 8 and "broken at entry 2" in tampered.stderr


def test_commands_other_than_init_need_an_initialised_folder(run):
    result = run("show")
    assert result.exit_code == 9 and "fenji keyholder init" in result.stderr
