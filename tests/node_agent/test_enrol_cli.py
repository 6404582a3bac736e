"""``fenji node enrol``: a clinic installs its own enrolment, and only its own."""

from __future__ import annotations

import shutil
import stat

from typer.testing import CliRunner

from federation.identity import ENROLMENT_FILE, load_enrolment
from fenji.cli import app
from keyholder import KeyHolderState
from node_agent.store import SiteStore


def _site(small_federation, tmp_path):
    site = tmp_path / "clinic"
    shutil.copytree(small_federation[0], site, ignore=shutil.ignore_patterns(ENROLMENT_FILE, "answered-*"))
    with SiteStore(site, read_only=True) as store:
        return site, store.site_id


def test_a_clinic_installs_its_enrolment_owner_only(small_federation, tmp_path):
    site, site_id = _site(small_federation, tmp_path)
    state = KeyHolderState(tmp_path / "kh")
    state.init()
    handed_over = state.enrol(site_id, "INST-1").save(tmp_path / "handover.json")
    result = CliRunner().invoke(app, ["node", "enrol", "--site-dir", str(site), "--file", str(handed_over)])
    assert result.exit_code == 0, result.output
    installed = site / ENROLMENT_FILE
    assert stat.S_IMODE(installed.stat().st_mode) == 0o600
    assert load_enrolment(installed) == load_enrolment(handed_over)
    assert state.keyholder_id in result.stdout


def test_another_sites_enrolment_or_garbage_is_refused(small_federation, tmp_path):
    site, _ = _site(small_federation, tmp_path)
    state = KeyHolderState(tmp_path / "kh")
    state.init()
    other = state.enrol("some_other_clinic", "INST-2").save(tmp_path / "other.json")
    result = CliRunner().invoke(app, ["node", "enrol", "--site-dir", str(site), "--file", str(other)])
    assert result.exit_code != 0 and "some_other_clinic" in result.stderr
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    result = CliRunner().invoke(app, ["node", "enrol", "--site-dir", str(site), "--file", str(garbage)])
    assert result.exit_code != 0 and "not an enrolment file" in result.stderr
    assert not (site / ENROLMENT_FILE).exists()
