"""The console's tier policy in a real browser: a commissioner sees each compared version's thresholds
and where they differ from production, edits them with a reason (a new version, waiting for two
approvals), and the audit view shows the old and new thresholds. Saves docs/console-policy.png."""

from __future__ import annotations

import pytest

from coordinator.service import create_app
from tests.coordinator.service import test_console_browser as shared
from tests.coordinator.service.bundle_registry import (
    make_bundle_registry,
    untrained_models,
)
from tests.coordinator.service.conftest import fresh_key_holder, make_service, running

DOCS, log_in = shared.DOCS, shared.log_in
browser, open_page = shared.browser, shared.open_page  # the fixtures, over this module's ``console``

TASK = "referral_risk"
SITES = {"clinic_a": {"auroc": 0.78, "n": 60.0}, "clinic_b": {"auroc": 0.72, "n": 45.0}}


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    """``fenji-referral_risk`` versions 1 (in production, approved by two commissioners) and 2."""
    base = tmp_path_factory.mktemp("console-policy")
    registry_file = make_bundle_registry(base / "registry", untrained_models(), {TASK: {"1": SITES, "2": SITES}},
                                         production={"triage": "1", "diagnosis": "1"})
    with fresh_key_holder(base / "keyholder") as key_holder:
        service = make_service(base / "home", registry_file, key_holder=key_holder)
        with running(create_app(service.coordinator)) as service.base_url:
            for who in ("commissioner", "commissioner2"):
                with service.client(who) as client:
                    client.post(f"/api/v1/models/{TASK}/versions/1/approve", json={"reason": "首个版本"})
            assert service.coordinator.registry.alias_version(TASK, "production") == "1"
            yield service


def test_show_diff_edit_and_audit_the_tier_policy(open_page, console):
    li = open_page()
    log_in(li, console, "commissioner")
    li.select_option("#task-select", TASK)
    li.wait_for_selector("#policy-v1 .policy-table")
    assert li.locator("#policy-v1 tbody tr").count() == 5
    assert li.inner_text("#policy-v1 [data-field='tertiary.risk_at_least'] td") == "60%"
    assert li.inner_text("#policy-v2 .policy-diff") == "阈值与生产版本 1 相同"

    li.click("#policy-edit-v1 summary")
    li.fill("#policy-form-v1 [data-field='tertiary.risk_at_least']", "50")
    li.fill("#policy-form-v1 [data-field='county.risk_at_least']", "15")
    li.fill("#policy-form-v1 [data-field='critical_risk']", "70")
    li.click("#policy-submit-v1")  # no reason: refused on the page, nothing sent
    assert "理由" in li.inner_text("#page-error")
    li.fill("#policy-form-v1 [data-field='critical_risk']", "40")  # below the tertiary threshold: the API refuses
    li.fill("#policy-reason-v1", "县级医院床位紧张，收紧上转阈值")
    li.click("#policy-submit-v1")
    li.wait_for_selector("#page-error:has-text('critical')")
    assert [v.version for v in console.coordinator.registry.versions(TASK)] == ["2", "1"]
    li.fill("#policy-form-v1 [data-field='critical_risk']", "70")
    li.click("#policy-submit-v1")
    li.wait_for_selector("#action-result:has-text('已登记版本 3')")
    assert li.locator(".version-card").evaluate_all("cs => cs.map(c => c.dataset.version)") == ["1", "3"]
    assert "由版本 1 修改分级阈值而来" in li.inner_text("#card-v3 .derived")
    assert li.inner_text("#policy-v3 .policy-diff") == "与生产版本 1 相比有 3 项阈值不同"
    changed = li.locator("#policy-v3 tr.changed").evaluate_all("rs => rs.map(r => r.dataset.field)")
    assert changed == ["tertiary.risk_at_least", "county.risk_at_least", "critical_risk"]
    assert li.inner_text("#policy-v3 tr.changed td.prod-value >> nth=0") == "60%"
    assert console.coordinator.registry.alias_version(TASK, "production") == "1"  # waits for two approvals
    li.screenshot(path=str(DOCS / "console-policy.png"), full_page=True)

    li.click("[data-view=audit]")
    li.wait_for_selector("#verify-result.ok")
    row = li.locator("#audit-table tbody tr[data-action='tier-policy-edit']")
    assert row.locator("td").nth(3).inner_text() == "修改分级阈值（新版本）"
    assert "三级·风险 60% → 50%" in row.inner_text() and "县级医院床位紧张" in row.inner_text()

    li.click("#lang-toggle")
    li.click("[data-view=models]")
    li.wait_for_selector("#policy-v3 .policy-diff:has-text('threshold')")
    assert li.inner_text("#policy-v3 .policy-diff") == "3 threshold(s) differ from production (version 1)"
    assert li.inner_text("#policy-v3 [data-field='tertiary.triage_at_most'] td") == "≤ level 1"


def test_a_data_scientist_sees_the_policy_but_no_form(open_page, console):
    page = open_page()
    log_in(page, console, "data_scientist")
    page.select_option("#task-select", TASK)
    page.wait_for_selector("#policy-v1 .policy-table")
    assert page.locator(".policy-form, .policy-edit").count() == 0
