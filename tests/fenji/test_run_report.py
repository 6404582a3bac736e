"""What `fenji sim` and `fenji demo` record about a run: replies left out are shown, written to the
JSON report and audited with the run; a run that fails its checks is audited as failed."""

from __future__ import annotations

import functools
import json

import pytest

import simulation.engine
from coordinator.audit import AuditLog
from coordinator.settings import CoordinatorSettings
from federation.errors import AggregateCheckError
from fenji.run_report import run_and_report
from tests.coordinator.test_bad_replies import foreign_key_site, misbehaving_site


def _with_mod(monkeypatch, mod) -> None:
    real = simulation.engine.run_simulated_federation
    monkeypatch.setattr(simulation.engine, "run_simulated_federation", functools.partial(real, client_mods=[mod]))


def test_left_out_replies_are_reported_and_audited(tmp_path, monkeypatch, small_federation, referral_spec):
    _with_mod(monkeypatch, misbehaving_site)
    settings = CoordinatorSettings(home=tmp_path / "home")
    report = run_and_report(spec=referral_spec, site_dirs=small_federation, rounds=2, encrypt=True,
                            json_out=tmp_path / "run.json", register=True, settings=settings, verbose=False,
                            title="bad site")
    written = json.loads((tmp_path / "run.json").read_text())
    assert written["excluded"] == report["excluded"] and {e["site"] for e in written["excluded"]} == {"site_d_gbk"}
    [entry] = AuditLog(settings.audit_path).entries()
    assert entry["action"] == "training-run" and entry["details"]["excluded"] == written["excluded"]


def test_a_run_that_fails_its_checks_is_audited_as_failed(tmp_path, monkeypatch, small_federation, referral_spec):
    _with_mod(monkeypatch, foreign_key_site)
    settings = CoordinatorSettings(home=tmp_path / "home")
    with pytest.raises(AggregateCheckError):
        run_and_report(spec=referral_spec, site_dirs=small_federation, rounds=2, encrypt=True,
                       json_out=None, register=True, settings=settings, verbose=False, title="foreign key")
    [entry] = AuditLog(settings.audit_path).entries()
    assert entry["action"] == "training-run-failed" and entry["details"]["error"] == "AggregateCheckError"
    assert AuditLog(settings.audit_path).verify() == 1
