"""``fenji node approve / revoke / policy / status``: the site admin's commands, run through the real
``fenji`` CLI on a copy of a real site folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fenji.cli import app
from models.errors import ExitCode
from node_agent.budget import NODE_AUDIT_FILE, charge_run, node_audit
from node_agent.policy import (
    POLICY_FILE,
    ApprovedPlan,
    DPPolicy,
    SitePolicy,
    load_site_policy,
    plan_digest,
    save_site_policy,
)
from node_agent.store import SiteStore

_JOB_FILES = ("enrolment.json", POLICY_FILE, NODE_AUDIT_FILE, "answered-*", "*.wal", "*.tmp")


@pytest.fixture()
def site(small_federation, tmp_path) -> Path:
    """A copy of a session site that never took part in a job: no policy, no audit, no budget spent."""
    site = tmp_path / "clinic"
    shutil.copytree(small_federation[0], site, ignore=shutil.ignore_patterns(*_JOB_FILES))
    with SiteStore(site) as store:
        store.connection.execute("DROP TABLE IF EXISTS privacy_budget")
    return site


def fenji(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _actions(site: Path) -> list[str]:
    return [e["action"] for e in node_audit(site).entries()]


def test_approve_policy_revoke_status_round_trip(site, referral_spec):
    result = fenji("node", "approve", "--site-dir", site, "--task", "referral_risk", "--max-rounds", 5,
                   "--max-learning-rate", 0.1, "--by", "Dr Wang")
    assert result.exit_code == 0, result.output
    digest = plan_digest(referral_spec)
    assert f"digest: {digest}" in result.stdout and "≤ 5 rounds" in result.stdout
    plan = load_site_policy(site).approved_plans[digest]
    assert (plan.task, plan.approved_by, plan.bounds.max_rounds, plan.bounds.max_learning_rate) == (
        "referral_risk", "Dr Wang", 5, 0.1)
    assert load_site_policy(site).check_job(referral_spec, {"num-rounds": 5}) == digest

    shown = fenji("node", "policy", "--site-dir", site)
    assert shown.exit_code == 0, shown.output
    assert "referral_risk" in shown.stdout and digest[:12] in shown.stdout and "Dr Wang" in shown.stdout
    assert "5/20/0.1" in shown.stdout and "Minimum n: 10" in shown.stdout

    status = fenji("node", "status", "--site-dir", site)
    assert status.exit_code == 0, status.output
    assert "plan-approved" in status.stdout and "chain verifies (1 entries" in status.stdout

    revoked = fenji("node", "revoke", "--site-dir", site, "--digest", digest[:8], "--by", "Dr Li")
    assert revoked.exit_code == 0, revoked.output
    assert load_site_policy(site).approved_plans == {}
    entries = node_audit(site).entries()
    assert [e["action"] for e in entries] == ["plan-approved", "plan-revoked"]
    assert entries[0]["details"]["plan"] == digest and entries[0]["details"]["by"] == "Dr Wang"
    assert entries[0]["details"]["bounds"]["max_rounds"] == 5
    assert entries[1]["details"] == {"task": "referral_risk", "plan": digest, "by": "Dr Li"}
    assert node_audit(site).verify() == 2


def test_approve_a_task_yaml_and_revoke_by_task_name(site, referral_spec, tmp_path):
    data = referral_spec.model_dump(mode="json")
    data["model"]["family"] = "mlp"
    path = tmp_path / "referral_mlp.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    assert fenji("node", "approve", "--site-dir", site, "--task", path).exit_code == 0
    assert fenji("node", "approve", "--site-dir", site, "--task", "referral_risk").exit_code == 0
    plans = load_site_policy(site).approved_plans
    assert len(plans) == 2 and {p.family for p in plans.values()} == {"logistic", "mlp"}
    result = fenji("node", "revoke", "--site-dir", site, "--task", "referral_risk")
    assert result.exit_code == 0, result.output
    assert load_site_policy(site).approved_plans == {}
    assert _actions(site) == ["plan-approved", "plan-approved", "plan-revoked", "plan-revoked"]


def test_revoke_needs_one_plan_it_can_name(site, referral_spec):
    policy = SitePolicy()
    plan = ApprovedPlan(task="referral_risk", family="logistic", approved_by="x", approved_at="2025-01-01T00:00:00")
    policy.approved_plans = {"abc1" + "0" * 60: plan, "abc2" + "0" * 60: plan}
    save_site_policy(site, policy)
    before = (site / POLICY_FILE).read_bytes()
    for args, message, in [(("--digest", "abc"), "matches 2 plans"), (("--digest", "fff"), "no approved plan"),
                           (("--task", "triage"), "no approved plan for task 'triage'"),
                           ((), "exactly one"), (("--task", "referral_risk", "--digest", "abc1"), "exactly one")]:
        result = fenji("node", "revoke", "--site-dir", site, *args)
        assert result.exit_code == ExitCode.SITE_DATA and message in result.stderr, (args, result.output)
    assert (site / POLICY_FILE).read_bytes() == before
    assert not (site / NODE_AUDIT_FILE).exists()
    assert fenji("node", "revoke", "--site-dir", site, "--digest", "ABC1").exit_code == 0
    assert list(load_site_policy(site).approved_plans) == ["abc2" + "0" * 60]


def test_policy_changes_are_validated_and_audited_with_old_and_new_values(site):
    result = fenji("node", "policy", "--site-dir", site, "--min-n", 20, "--dp", "--dp-epsilon", 0.5,
                   "--dp-budget", 3, "--release-train-loss", "--by", "Dr Wang")
    assert result.exit_code == 0, result.output
    policy = load_site_policy(site)
    assert (policy.min_n, policy.dp.enabled, policy.dp.epsilon_per_run, policy.dp.budget_epsilon,
            policy.release_train_loss) == (20, True, 0.5, 3.0, True)
    (entry,) = node_audit(site).entries()
    assert entry["action"] == "policy-changed" and entry["details"]["by"] == "Dr Wang"
    assert entry["details"]["old"] == {"min_n": 10, "dp.enabled": False, "dp.epsilon_per_run": 1.0,
                                       "dp.budget_epsilon": 10.0, "release_train_loss": False}
    assert entry["details"]["new"] == {"min_n": 20, "dp.enabled": True, "dp.epsilon_per_run": 0.5,
                                       "dp.budget_epsilon": 3.0, "release_train_loss": True}
    # Setting what is already set, or only showing, changes and audits nothing.
    before = (site / POLICY_FILE).read_bytes()
    assert fenji("node", "policy", "--site-dir", site, "--min-n", 20).exit_code == 0
    assert fenji("node", "policy", "--site-dir", site).exit_code == 0
    assert (site / POLICY_FILE).read_bytes() == before and len(node_audit(site).entries()) == 1


@pytest.mark.parametrize("bad", [
    ("--min-n", "0"), ("--dp-delta", "1.5"), ("--dp-epsilon", "-1"), ("--dp-budget", "0"),
    ("--dp-period-days", "0"), ("--min-n", "20", "--dp-delta", "2"),
], ids=["min-n-0", "delta-1.5", "epsilon-negative", "budget-0", "period-0", "good-and-bad"])
def test_bad_policy_values_leave_the_file_unchanged(site, bad):
    assert fenji("node", "policy", "--site-dir", site, "--min-n", 15).exit_code == 0
    before = (site / POLICY_FILE).read_bytes()
    result = fenji("node", "policy", "--site-dir", site, *bad)
    assert result.exit_code == ExitCode.SITE_DATA, result.output
    assert "invalid policy value" in result.stderr and "nothing was changed" in result.stderr
    assert (site / POLICY_FILE).read_bytes() == before
    assert _actions(site) == ["policy-changed"]


def test_statistics_queries_are_allowed_noised_and_denied_through_the_audited_edit(site):
    result = fenji("node", "policy", "--site-dir", site, "--analytics-allow", "mean, count",
                   "--analytics-dp-epsilon", 0.5, "--by", "Dr Wang")
    assert result.exit_code == 0, result.output
    assert "analytics.allowed: none → count,mean" in result.stdout
    analytics = load_site_policy(site).analytics
    assert (analytics.allowed, analytics.dp_epsilon) == (["count", "mean"], 0.5)
    (entry,) = node_audit(site).entries()
    assert entry["action"] == "policy-changed" and entry["details"]["by"] == "Dr Wang"
    assert entry["details"]["old"] == {"analytics.dp_epsilon": 0.0, "analytics.allowed": []}
    assert entry["details"]["new"] == {"analytics.dp_epsilon": 0.5, "analytics.allowed": ["count", "mean"]}
    for command in ("policy", "status"):
        shown = fenji("node", command, "--site-dir", site)
        assert shown.exit_code == 0, shown.output
        assert "Statistics queries: count, mean answered" in shown.stdout and "epsilon 0.5 per query" in shown.stdout
    # Allowing what is allowed changes and audits nothing; a kind added keeps those before it in place.
    before = (site / POLICY_FILE).read_bytes()
    assert "policy unchanged" in fenji("node", "policy", "--site-dir", site, "--analytics-allow", "count").stdout
    assert (site / POLICY_FILE).read_bytes() == before and len(node_audit(site).entries()) == 1
    result = fenji("node", "policy", "--site-dir", site, "--analytics-allow", "crosstab", "--analytics-deny", "count",
                   "--analytics-dp-epsilon", 0)
    assert result.exit_code == 0, result.output
    assert load_site_policy(site).analytics.allowed == ["mean", "crosstab"]
    assert "Statistics queries: mean, crosstab answered about approved tasks, exact" in result.stdout
    assert fenji("node", "policy", "--site-dir", site, "--analytics-deny", "all").exit_code == 0
    assert load_site_policy(site).analytics.allowed == []
    assert "Statistics queries: none answered" in fenji("node", "status", "--site-dir", site).stdout
    assert _actions(site) == ["policy-changed"] * 3 and node_audit(site).verify() == 3


@pytest.mark.parametrize(("bad", "message"), [
    (("--analytics-allow", "count,median"), "--analytics-allow: unknown statistics query kind 'median'"),
    (("--analytics-deny", "sql"), "--analytics-deny: unknown statistics query kind 'sql'"),
    (("--analytics-allow", "mean", "--analytics-deny", "mean"), "mean both allowed and denied"),
    (("--analytics-dp-epsilon", "-0.5"), "invalid policy value: analytics.dp_epsilon"),
    (("--min-n", "20", "--analytics-allow", "count,nope"), "unknown statistics query kind 'nope'"),
], ids=["unknown-kind", "unknown-denied", "allowed-and-denied", "epsilon-negative", "good-and-bad"])
def test_bad_statistics_settings_are_refused_and_change_nothing(site, bad, message):
    assert fenji("node", "policy", "--site-dir", site, "--analytics-allow", "count").exit_code == 0
    before = (site / POLICY_FILE).read_bytes()
    result = fenji("node", "policy", "--site-dir", site, *bad)
    assert result.exit_code == ExitCode.SITE_DATA, result.output
    assert message in result.stderr and "nothing was changed" in result.stderr
    assert (site / POLICY_FILE).read_bytes() == before
    assert _actions(site) == ["policy-changed"]


def test_bad_bounds_or_an_unknown_task_approve_nothing(site):
    result = fenji("node", "approve", "--site-dir", site, "--task", "referral_risk", "--max-rounds", 0)
    assert result.exit_code == ExitCode.SITE_DATA and "invalid plan bounds: max_rounds" in result.stderr
    result = fenji("node", "approve", "--site-dir", site, "--task", "no_such_task")
    assert result.exit_code == ExitCode.TASK_SPEC and "unknown task" in result.stderr
    assert not (site / POLICY_FILE).exists() and not (site / NODE_AUDIT_FILE).exists()
    result = fenji("node", "approve", "--site-dir", site.parent / "missing", "--task", "referral_risk")
    assert result.exit_code == ExitCode.SITE_DATA and "no site folder" in result.stderr


def test_a_broken_policy_file_stops_every_command(site):
    (site / POLICY_FILE).write_text("{not json", encoding="utf-8")
    for args in (("approve", "--task", "referral_risk"), ("revoke", "--task", "referral_risk"),
                 ("policy",), ("policy", "--min-n", "20"), ("status",)):
        result = fenji("node", args[0], "--site-dir", site, *args[1:])
        assert result.exit_code == ExitCode.SITE_DATA and "is not valid" in result.stderr, (args, result.output)
    assert (site / POLICY_FILE).read_text(encoding="utf-8") == "{not json"


def test_status_shows_budget_spent_and_left_and_the_last_ten_entries(site):
    assert fenji("node", "policy", "--site-dir", site, "--dp", "--dp-epsilon", 1.5, "--dp-budget", 4).exit_code == 0
    charge_run(site, load_site_policy(site).dp, run_id="run-7", task="referral_risk")
    log = node_audit(site)
    for name in "abcdefghij":
        log.append(actor="node", action=f"event-{name}", reason=f"because {name}")
    result = fenji("node", "status", "--site-dir", site)
    assert result.exit_code == 0, result.output
    assert "spent epsilon 1.5 in the last 365 days, 2.5 of 4 left" in result.stdout
    # 12 entries: the policy change and the charge are older than the last ten.
    assert "event-a" in result.stdout and "because j" in result.stdout and "event-j" in result.stdout
    assert "policy-changed" not in result.stdout and "run-7" not in result.stdout
    log.append(actor="node", action="event-k")
    assert "run-7" not in fenji("node", "status", "--site-dir", site).stdout
    assert "chain verifies (13 entries" in fenji("node", "status", "--site-dir", site).stdout


def test_status_with_a_charge_in_view_and_a_tampered_chain(site):
    dp = DPPolicy(enabled=True, epsilon_per_run=1.0)
    charge_run(site, dp, run_id="run-7", task="referral_risk")
    shown = fenji("node", "status", "--site-dir", site)
    assert shown.exit_code == 0 and "dp-charge" in shown.stdout and "run-7" in shown.stdout and "referral_risk" in shown.stdout
    lines = (site / NODE_AUDIT_FILE).read_text(encoding="utf-8").splitlines(keepends=True)
    (site / NODE_AUDIT_FILE).write_text(lines[0].replace('"epsilon": 1.0', '"epsilon": 0.1'), encoding="utf-8")
    result = fenji("node", "status", "--site-dir", site)
    assert result.exit_code == ExitCode.AUDIT, result.output
    assert "does NOT verify" in result.stdout and "broken at entry 1" in result.stderr


def _approve_many(site_dir: str, first: int, count: int, barrier) -> None:
    from node_agent.policy_edits import approve_app

    barrier.wait()  # every process starts its edits at once: the most contention
    for i in range(first, first + count):
        approve_app(Path(site_dir), by=f"admin-{first}", digest=f"{i:064x}")


def test_concurrent_policy_edits_lose_nothing(tmp_path):
    """Two admins (here six processes) editing the policy at once: every edit survives, because each
    loads, changes and saves under the site's policy lock."""
    import multiprocessing

    site = tmp_path / "clinic"
    site.mkdir()
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(6)
    workers = [ctx.Process(target=_approve_many, args=(str(site), 100 * k, 15, barrier)) for k in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    from node_agent.policy import load_site_policy

    assert len(load_site_policy(site).approved_apps) == 6 * 15
