"""The console's sites view and model cards in a real browser: after a job, a commissioner sees each
clinic's last reply, bucketed rows and quarantine rate, decisions, privacy budget as a bar and the
released decision-quality review; a data scientist is told the review is withheld; a version's model
card is rendered in the page's language (its Chinese card, then its English one after the switch), tables
as tables, and raw HTML in it stays text.
Saves docs/console-sites.png."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from coordinator.service import create_app
from coordinator.service.jobs import JobResult
from coordinator.service.sites import Sighting
from tests.coordinator.service import test_console_browser as shared
from tests.coordinator.service.bundle_registry import (
    make_bundle_registry,
    untrained_models,
)
from tests.coordinator.service.conftest import (
    SITE_METRICS,
    TASK,
    fresh_key_holder,
    make_service,
    running,
)
from tests.coordinator.service.test_jobs import submit, wait_for

DOCS, log_in = shared.DOCS, shared.log_in
browser, open_page = shared.browser, shared.open_page  # the fixtures, over this module's ``console``

CARD = """# Model card: fenji-triage version 2

## Intended use
Decision support at the **first visit**; see `triage`.

## Performance per site (held-out rows)
| site | test rows | global |
|---|---:|---:|
| clinic_a | 60 | 0.800 |
| clinic_b | 45 | 0.740 |

<img src=x onerror="document.title='owned'"> <script>document.title='owned'</script>

## Known limits
- a test's model
"""
CARD_ZH = """# 模型说明：fenji-triage 第 2 版

## 适用范围
供**首诊**时辅助决策；见 `triage`。

## 各站点表现（留出数据）
| 站点 | 测试行数 | 全局模型 |
|---|---:|---:|
| clinic_a | 60 | 0.800 |
| clinic_b | 45 | 0.740 |

<img src=x onerror="document.title='owned'"> <script>document.title='owned'</script>

## 已知局限
- 测试用模型
"""
NOW = datetime.now(timezone.utc)
REPORT = {"rows-from": 100.0, "rows-to": 200.0, "quarantine-from": 0.02, "quarantine-to": 0.05, "plans-approved": 2.0,
          "runs-accepted": 3.0, "runs-refused": 1.0, "dp-spent": 2.5, "dp-left": 7.5, "dp-budget": 10.0,
          "period-days": 365.0}
SIGHTINGS = {
    "clinic_a": Sighting(last_seen=NOW.isoformat(timespec="seconds"), audit_head="ab" * 32, report=REPORT | {
        "quality-decisions": 55.0, "quality-over-referral-rate": 0.333, "quality-agreement-rate": 0.6}),
    "clinic_b": Sighting(last_seen=(NOW - timedelta(days=30)).isoformat(timespec="seconds"), audit_head="cd" * 32,
                         report={k: v for k, v in REPORT.items() if k != "rows-to"} | {
                             "rows-from": 50000.0, "dp-spent": 9.0, "dp-left": 1.0}),  # the open-ended bucket
    "clinic_c": Sighting(),  # enrolled for the run, never answered
}


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    """``fenji-triage`` versions 1-3, version 2 with a fuller model card; one job has run and seen three sites."""
    import mlflow

    base = tmp_path_factory.mktemp("console-sites")
    registry_file = make_bundle_registry(base / "registry", untrained_models(), {TASK: SITE_METRICS},
                                         production={"referral_risk": "1", "diagnosis": "1"})
    with fresh_key_holder(base / "keyholder") as key_holder:
        service = make_service(base / "home", registry_file, key_holder=key_holder)
        client = mlflow.MlflowClient(tracking_uri=service.coordinator.registry.tracking_uri)
        (base / "card").mkdir()
        (base / "card" / "model_card.md").write_text(CARD, encoding="utf-8")
        (base / "card" / "model_card.zh-CN.md").write_text(CARD_ZH, encoding="utf-8")
        for name in ("model_card.md", "model_card.zh-CN.md"):
            client.log_artifact(service.coordinator.registry.version(TASK, "2").run_id, str(base / "card" / name))
        with running(create_app(service.coordinator)) as service.base_url:
            service.coordinator.jobs.start(lambda request, on_round: JobResult(sightings=SIGHTINGS))
            try:
                assert wait_for(service, submit(service, rounds=1)["id"])["status"] == "succeeded"
            finally:
                service.coordinator.jobs.stop(timeout=60)
            yield service


def show_sites(page):
    page.click("[data-view=sites]")
    page.wait_for_selector("#sites-table tbody tr")


def test_a_commissioner_sees_each_sites_report_and_a_data_scientist_no_quality_review(open_page, console):
    page = open_page()
    log_in(page, console, "commissioner")
    show_sites(page)
    rows = page.locator("#sites-table tbody tr")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.site)") == ["clinic_a", "clinic_b", "clinic_c"]
    a, b, c = (f"#sites-table tr[data-site={s}]" for s in ("clinic_a", "clinic_b", "clinic_c"))
    assert page.inner_text(f"{a} td.rows") == "100–199" and page.inner_text(f"{b} td.rows") == "≥ 50,000"
    assert page.inner_text(f"{a} td.quarantine") == "2%–5%" and page.inner_text(f"{a} td.runs") == "3 / 1"
    assert page.inner_text(f"{a} td.q-over_referral_rate") == "33.3%" and page.inner_text(f"{a} td.q-decisions") == "55"
    assert page.inner_text(f"{a} td.q-under_referral_rate") == "—"  # suppressed at the site: never sent
    assert page.inner_text(f"{b} td.q-over_referral_rate") == "—"
    # Budget bars: spent against left, on one scale (the site's budget for the period).
    assert page.locator("svg.budget-bar").count() == 2
    assert float(page.get_attribute(f"{a} rect.budget-spent", "width")) == pytest.approx(120 * 0.25)
    assert float(page.get_attribute(f"{b} rect.budget-spent", "width")) == pytest.approx(120 * 0.9)
    assert "已用 9 / 共 10，剩 1" in page.inner_text(f"{b} td.budget-cell")
    # A site not heard from for a week is marked; one never heard from says so.
    assert page.get_attribute(b, "class") == "stale" and page.get_attribute(a, "class") is None
    assert "尚未应答" in page.inner_text(c) and "共 3 个站点，1 个在近 7 天内有应答" in page.inner_text("#sites-summary")
    shared.DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "console-sites.png"), full_page=True)
    page.click("#lang-toggle")
    assert page.inner_text("[data-view=sites]") == "Sites" and "spent 9 of 10, 1 left" in page.inner_text(b)
    assert "3 sites, 1 answered in the last 7 days" in page.inner_text("#sites-summary")
    page.click("#lang-toggle")

    scientist = open_page()
    log_in(scientist, console, "data_scientist")
    show_sites(scientist)
    assert scientist.locator("td.quality-withheld").count() == 3 and scientist.locator("td.quality").count() == 0
    assert "仅卫健委委员可见" in scientist.inner_text("#sites-table tr[data-site=clinic_a]")
    assert scientist.locator("svg.budget-bar").count() == 2  # the budget: what their DP jobs may still spend


def test_a_versions_model_card_is_rendered_safely_in_either_language(open_page, console):
    page = open_page()
    log_in(page, console, "data_scientist")
    page.select_option("#version-b", "2")
    page.wait_for_selector("#card-v2")
    page.click("#card-v2 details.model-card-block summary")
    page.wait_for_selector("#model-card-v2 table")
    card = page.locator("#model-card-v2")
    assert card.locator("h3").all_inner_texts()[:1] == ["模型说明：fenji-triage 第 2 版"]  # its Chinese card
    assert card.locator("h4").all_inner_texts() == ["适用范围", "各站点表现（留出数据）", "已知局限"]
    assert card.locator("tbody tr").count() == 2 and card.locator("strong").inner_text() == "首诊"
    assert card.locator("img, script").count() == 0 and "<img src=x" in card.inner_text()  # raw HTML stays text
    assert page.title() != "owned"
    page.click("#lang-toggle")  # the open card is fetched and drawn again, in English
    page.wait_for_selector("#model-card-v2 h4:has-text('Known limits')")
    assert card.locator("li").inner_text() == "a test's model"
    assert card.locator("h3").all_inner_texts()[:1] == ["Model card: fenji-triage version 2"]
