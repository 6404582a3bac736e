"""The site report a clinic sends with a run's statistics reply: bucketed rows and quarantine rate, its
own decisions, its privacy budget and the released decision-quality review; and the egress guard that
lets out only numbers of a declared kind that keep their kind's rule."""

from __future__ import annotations

import shutil

import pytest
from flwr.app import ConfigRecord, MetricRecord

from node_agent.admission import refusal_content
from node_agent.budget import charge_run, node_audit
from node_agent.egress import check_reply, release
from node_agent.errors import EgressViolation, PolicyRefusal
from node_agent.policy import DPPolicy, SitePolicy, load_site_policy, save_site_policy
from node_agent.site_report import bucket, site_report
from node_agent.store import SiteStore
from tests.node_agent.serve.test_followup_quality import VISITS, open_clinic
from tests.node_agent.test_egress_release import _ciphertext, _reply


def test_a_bucket_is_the_pair_of_edges_around_a_value_and_small_values_share_the_first():
    edges = (0, 50, 100, 200)
    assert bucket(120, edges) == (100.0, 200.0) and bucket(100, edges) == (100.0, 200.0)
    assert bucket(250, edges) == (200.0, None)
    assert bucket(60, edges, floor=80) == (0.0, 100.0)  # 50 is below the floor: 0-99 is one bucket


@pytest.fixture()
def site(tmp_path, pristine_federation, referral_spec):
    """site_b (200 rows) with a plan approved, a DP charge, a refused and two accepted runs, and the
    doctors' decisions of the quality review's test."""
    folder = tmp_path / "site_b"
    shutil.copytree(pristine_federation[1], folder)
    policy = load_site_policy(folder)
    policy.approve(referral_spec, by="test")
    policy.dp = DPPolicy(enabled=True, epsilon_per_run=1.5, budget_epsilon=10.0)
    save_site_policy(folder, policy)
    assert charge_run(folder, policy.dp, run_id="r1", task=referral_spec.name)
    for run in ("r1", "r2"):
        node_audit(folder).append(actor="node", action="job-accepted", run_id=run, task=referral_spec.name)
    for phase in ("stats", "train"):  # one refused run, refused in two phases
        refusal_content(folder, PolicyRefusal("plan not approved"), phase=phase, config=ConfigRecord({"run-id": "r3"}))
    open_clinic(folder, VISITS)
    return folder


def test_the_report_holds_buckets_decisions_budget_and_only_the_released_quality(site, referral_spec):
    with SiteStore(site, read_only=True) as store:
        summary = store.summary(referral_spec.name)
    rows = int(summary["accepted"].sum())
    assert 100 <= rows < 200  # the bucket below is the one this site's rows fall in
    rate = summary["quarantined"].sum() / summary["rows_read"].sum()
    report = site_report(site, referral_spec.name)
    assert (report["rows-from"], report["rows-to"]) == (100.0, 200.0)
    assert report["quarantine-from"] <= rate < report["quarantine-to"]
    assert (report["plans-approved"], report["runs-accepted"], report["runs-refused"]) == (1.0, 2.0, 1.0)
    assert (report["dp-spent"], report["dp-left"], report["dp-budget"], report["period-days"]) == (1.5, 8.5, 10.0, 365.0)
    # The review's released form (node_agent.quality): 3 under-referrals are below min n and stay home.
    assert report["quality-over-referral"] == 10.0 and report["quality-decisions"] == 55.0
    assert "quality-under-referral" not in report and "quality-under-referral-rate" not in report
    assert report["quality-over-referral-rate"] == pytest.approx(10 / 30, abs=1e-3)
    # What the guard lets out is the report as made.
    reply = _reply({"ciphertext": _ciphertext(), "metrics": MetricRecord({"num-examples": rows}),
                    "site": ConfigRecord({"site-id": "site_b"}), "report": MetricRecord(report)})
    check_reply(reply)
    assert dict(release(reply, load_site_policy(site)).content["report"]) == report


def test_a_site_without_decisions_or_ledger_reports_what_it_has(tmp_path, pristine_federation, referral_spec):
    folder = tmp_path / "site_d"
    shutil.copytree(pristine_federation[3], folder)
    report = site_report(folder, referral_spec.name)
    assert (report["rows-from"], report["rows-to"]) == (100.0, 200.0)
    assert report["plans-approved"] == 0.0 and report["runs-refused"] == 0.0 and report["dp-spent"] == 0.0
    assert not any(key.startswith("quality-") for key in report)
    assert site_report(folder, "triage") == {k: v for k, v in report.items() if not k.startswith(("rows", "quarantine"))} | {
        "rows-from": 0.0, "rows-to": 50.0}  # no triage rows: the first bucket, and no rate over no rows


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("quality-under-referral", 3.0, "minimum n"),      # a small count: suppressed at the site, never sent
    ("quality-over-referral", 12.0, "rounded"),        # a count not on the rounding grid
    ("rows-from", 123.0, "row bucket"),                # an exact row count in a bucket's place
    ("quarantine-to", 0.07, "quarantine bucket"),
    ("quality-agreement-rate", 1.5, "rate"),
    ("runs-refused", 1.5, "count"),
    ("dp-spent", float("nan"), "finite"),
])
def test_the_guard_refuses_a_report_number_that_breaks_its_kinds_rule(key, value, problem):
    reply = _reply({"metrics": MetricRecord({"num-examples": 100}), "report": MetricRecord({key: value})})
    check_reply(reply)
    with pytest.raises(EgressViolation, match=problem):
        release(reply, SitePolicy())


def test_an_undeclared_report_number_does_not_leave():
    reply = _reply({"metrics": MetricRecord({"num-examples": 100}), "report": MetricRecord({"rows": 137.0})})
    with pytest.raises(EgressViolation, match="undeclared metric 'rows'"):
        check_reply(reply)
    # A report key is not a metric either: the two records' declarations do not mix.
    with pytest.raises(EgressViolation, match="undeclared metric 'rows-from'"):
        check_reply(_reply({"metrics": MetricRecord({"num-examples": 100, "rows-from": 100.0})}))
