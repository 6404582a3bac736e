"""The health commission's console in a real browser (Debian's Chromium driven by Playwright): a
commissioner compares two versions and approves one with a reason; a second commissioner (on a tablet)
signs second and production moves, and a clinic's node picks the version up; a rollback, which the
node follows too; the audit view shows all of it, verified. Saves docs/console*.png."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from coordinator.service import create_app
from tests.coordinator.service.bundle_registry import make_bundle_registry, released_curves
from tests.coordinator.service.conftest import (
    SITE_METRICS,
    TASK,
    fresh_key_holder,
    make_service,
    running,
)

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DOCS = Path(__file__).resolve().parents[3] / "docs"
ROUNDS = {"1": [0.62, 0.67, 0.70], "2": [0.64, 0.72, 0.76, 0.78], "3": [0.66, 0.74, 0.79, 0.80]}  # federated AUROC
# Referral risk (binary: its sites release curves) in two versions; clinic_c too small for curves in v1.
REFERRAL_METRICS = {"1": {"clinic_a": {"auroc": 0.74, "n": 900.0}, "clinic_b": {"auroc": 0.70, "n": 400.0},
                          "clinic_c": {"auroc": 0.69, "n": 60.0}},
                    "2": {"clinic_a": {"auroc": 0.79, "n": 900.0}, "clinic_b": {"auroc": 0.76, "n": 400.0},
                          "clinic_c": {"auroc": 0.75, "n": 300.0}}}
REFERRAL_CURVES = {"1": {"clinic_a": released_curves(900, 0.25, 1), "clinic_b": released_curves(400, 0.3, 2)},
                   "2": {"clinic_a": released_curves(900, 0.25, 3), "clinic_b": released_curves(400, 0.3, 4),
                         "clinic_c": released_curves(300, 0.35, 5)}}
# Diagnosis (multiclass): its sites release the curves of its top-label view (view 1: right or wrong).
DIAGNOSIS_CURVES = {"1": {"clinic_a": released_curves(900, 0.45, 6) | {"view": 1.0}}}


def make_console_registry(home: Path) -> Path:
    """``fenji-triage`` in versions 1-3 with the sites' metrics of ``SITE_METRICS`` and an AUROC per
    round, ``fenji-referral_risk`` in versions 1-2 with the sites' curves; the tasks other than triage in
    production at version 1 (a node needs every task)."""
    from tests.node_agent.serve.trained_advisor import _models

    return make_bundle_registry(home, _models(), {TASK: SITE_METRICS, "referral_risk": REFERRAL_METRICS},
                                rounds=ROUNDS, curves={"referral_risk": REFERRAL_CURVES, "diagnosis": DIAGNOSIS_CURVES},
                                production={task: "1" for task in _models() if task != TASK})


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    base = tmp_path_factory.mktemp("console")
    registry_file = make_console_registry(base / "registry")
    with fresh_key_holder(base / "keyholder") as key_holder:
        service = make_service(base / "home", registry_file, key_holder=key_holder)
        with running(create_app(service.coordinator)) as service.base_url:
            yield service


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium not installed (apt-get install chromium; .ci/run does it)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture()
def open_page(browser, console):
    """``open_page(width, height)``: a new tab of its own (its own sessionStorage) on the console."""
    contexts, foreign, errors = [], [], []

    def make(width: int = 1366, height: int = 900):
        context = browser.new_context(viewport={"width": width, "height": height}, base_url=console.base_url,
                                      locale="en-US")  # zh-CN must be the page's default, not the browser's
        # Everything the page loads must come from the coordinator itself.
        context.route("**/*", lambda route: (route.continue_() if route.request.url.startswith(console.base_url)
                                             else (foreign.append(route.request.url), route.abort())))
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield make
    for context in contexts:
        context.close()
    assert foreign == [] and errors == []


def log_in(page, console, who):
    page.goto("/")
    page.fill("#token-input", console.tokens[who])
    page.click("#login-button")
    page.wait_for_selector("#models-view:not([hidden]) .version-card")


def node_version(console, site: Path) -> str:
    """What a clinic's node serves for the task after it follows the production alias (``fenji node serve``
    at start, ``POST /api/v1/admin/reload`` after)."""
    from node_agent.distribution import ModelDistribution

    return ModelDistribution(site, console.coordinator.registry.tracking_uri).fetch().models[TASK].version


def test_compare_approve_twice_node_follows_roll_back_and_audit(open_page, console, tmp_path):
    for who in ("commissioner", "commissioner2"):  # version 1 went to production before: rollback has a target
        with console.client(who) as client:
            assert client.post(f"/api/v1/models/{TASK}/versions/1/approve", json={"reason": "首个版本"}).status_code == 200
    clinic = tmp_path / "clinic"
    assert console.alias() == "1" and node_version(console, clinic) == "1"

    # Commissioner Li, on a laptop: the page opens in Chinese, production (v1) against the newest (v3).
    li = open_page()
    log_in(li, console, "commissioner")
    assert li.evaluate("document.documentElement.lang") == "zh-CN"
    assert li.inner_text("#production-now") == "当前生产版本：1"
    assert li.locator(".version-card").evaluate_all("cs => cs.map(c => c.dataset.version)") == ["1", "3"]
    li.select_option("#version-b", "2")
    li.wait_for_selector("#card-v2")
    assert li.locator("#card-v2 table.sites tbody tr").count() == 3  # the three clinics that released metrics for v2
    assert "clinic_a 0.800" in li.inner_text("#card-v2 .gap-line") and "clinic_b 0.740" in li.inner_text("#card-v2 .gap-line")
    assert li.inner_text("#card-v2 .gap-row td.chosen") == "0.060"
    assert li.locator("#site-chart rect.bar.series-0").count() == 2  # v1: two sites
    assert li.locator("#site-chart rect.bar.series-1").count() == 3  # v2: three sites
    assert li.locator("#gap-chart rect.gap-bar").count() == 3  # every version's gap
    assert li.locator("#round-chart polyline").count() == 2
    assert li.locator("#round-chart circle.series-1").count() == len(ROUNDS["2"])
    assert li.is_disabled("#approve-v1") and li.is_disabled("#rollback-v2")  # serving already; never approved
    DOCS.mkdir(exist_ok=True)
    li.screenshot(path=str(DOCS / "console.png"), full_page=True)

    li.click("#approve-v2")  # no reason: refused on the page, nothing sent
    assert "理由" in li.inner_text("#page-error")
    li.fill("#reason-v2", "三家诊所均有改善，站点间差距由 0.02 升至 0.06 仍可接受")
    li.click("#approve-v2")
    li.wait_for_selector("#action-result:has-text('等待另一位委员')")
    assert console.alias() == "1"
    li.click("[data-view=approvals]")
    li.wait_for_selector("#pending-list li")
    assert li.is_disabled("#pending-list button")  # four eyes: not the same commissioner twice
    assert "您已签署" in li.inner_text("#pending-list")
    assert li.inner_text("#pending-count") == "1"

    # Commissioner Wang, on a tablet: signs second; production moves and the clinic's node follows.
    wang = open_page(820, 1180)
    log_in(wang, console, "commissioner2")
    wang.click("[data-view=approvals]")
    wang.wait_for_selector("#pending-list li")
    assert "三家诊所均有改善" in wang.inner_text("#pending-list")
    wang.fill("#pending-list textarea", "复核各站点指标，同意上线")
    wang.click("#pending-list button")
    wang.wait_for_selector("#action-result:has-text('已上线生产')")
    assert console.alias() == "2" and node_version(console, clinic) == "2"
    assert wang.is_hidden("#pending-count") and "test commissioner2" in wang.inner_text("#history-list")

    # A rollback to version 1, with a reason; the node follows it back.
    wang.click("[data-view=models]")
    wang.wait_for_selector("#production-now:has-text('当前生产版本：2')")
    wang.select_option("#version-b", "2")
    wang.wait_for_selector("#card-v2 .badge.prod")
    assert wang.is_enabled("#rollback-v1") and wang.is_disabled("#rollback-v2")  # v2 serves now
    wang.fill("#reason-v1", "clinic_c 报告版本 2 的转诊建议偏多，先回滚核查")
    wang.screenshot(path=str(DOCS / "console-tablet.png"), full_page=True)
    wang.click("#rollback-v1")
    wang.wait_for_selector("#action-result:has-text('已回滚至版本 1')")
    assert console.alias() == "1" and node_version(console, clinic) == "1"
    assert wang.inner_text("#production-now") == "当前生产版本：1"

    # The audit trail shows all of it, and verifies against the key holder.
    wang.click("[data-view=audit]")
    wang.wait_for_selector("#verify-result.ok")
    with console.client("admin") as client:
        entries = client.get("/api/v1/audit").json()["entries"]
    rows = wang.locator("#audit-table tbody tr")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.action)") == [e["action"] for e in reversed(entries)]
    assert [e["action"] for e in entries][-5:] == ["promotion-approved", "promotion", "promotion-approved", "promotion",
                                                   "rollback"]
    assert f"共 {len(entries)} 条记录" in wang.inner_text("#verify-result")
    assert f"签署至第 {len(entries)} 条" in wang.inner_text("#verify-result")
    trail = wang.inner_text("#audit-table")
    for reason in ("三家诊所均有改善", "复核各站点指标，同意上线", "clinic_c 报告版本 2 的转诊建议偏多"):
        assert reason in trail
    assert rows.first.locator("td").nth(3).inner_text() == "回滚"
    wang.screenshot(path=str(DOCS / "console-audit.png"), full_page=True)

    # English on request, remembered; the token stays for this tab only.
    li.click("[data-view=models]")
    li.wait_for_selector("#pending-count", state="hidden")  # the page read the promotions again
    li.click("#lang-toggle")
    assert li.inner_text("[data-view=models]") == "Model versions"
    assert li.inner_text("#production-now") == "In production: version 1"
    assert li.inner_text("#card-v1 .badge.prod") == "production"
    li.screenshot(path=str(DOCS / "console-en.png"), full_page=True)
    li.reload()
    li.wait_for_selector("#models-view:not([hidden]) .version-card")
    assert li.inner_text("[data-view=models]") == "Model versions"


def test_rounds_endpoint_and_a_data_scientist_sees_no_audit_and_no_buttons(open_page, console):
    with console.client("data_scientist") as client:
        rounds = client.get(f"/api/v1/models/{TASK}/versions/2/rounds").json()
        assert [p["value"] for p in rounds["rounds"]["auroc"]] == ROUNDS["2"]
        assert client.get(f"/api/v1/models/{TASK}/versions/99/rounds").status_code == 404
        curves = client.get("/api/v1/models/referral_risk/versions/2/curves").json()["sites"]
    page = open_page()
    log_in(page, console, "data_scientist")
    assert page.is_hidden("#view-audit") and page.locator(".version-card textarea, .version-card button").count() == 0

    # ROC and calibration per site: none for triage (not binary), two versions overlaid for referral risk.
    assert "二分类" in page.inner_text("#curves")
    page.select_option("#task-select", "referral_risk")
    page.wait_for_selector("#curves .site-curves[data-site=clinic_c]")
    assert page.locator("#curves .site-curves").evaluate_all("cs => cs.map(c => c.dataset.site)") == [
        "clinic_a", "clinic_b", "clinic_c"]
    assert page.locator("#curves svg.roc").count() == 3 and page.locator("#curves svg.calibration").count() == 3
    a = page.locator("#curves .site-curves[data-site=clinic_a]")
    assert a.locator("polyline.roc-line").count() == 2  # versions 1 and 2
    # A dot per threshold the site kept, one per bin it released.
    assert a.locator("circle.roc-point.series-1").count() == len(curves["clinic_a"]["roc"]) - 2
    assert a.locator("circle.cal-bin.series-1").count() == len(curves["clinic_a"]["calibration"])
    c = page.locator("#curves .site-curves[data-site=clinic_c]")  # released for version 2 only
    assert c.locator("polyline.roc-line").count() == 1 and "版本 1：未发布" in c.inner_text()
    page.screenshot(path=str(DOCS / "console-curves.png"), full_page=True)
    assert "正类概率" in page.inner_text("#curves .curves-view")
    page.click("#lang-toggle")
    assert "v1: not released" in c.inner_text() and "risk ≥" in a.locator("circle.roc-point").first.inner_html()
    assert "positive class" in page.inner_text("#curves .curves-view")

    # Diagnosis (multiclass): the top label's confidence against right or wrong, named as such.
    page.select_option("#task-select", "diagnosis")
    page.wait_for_selector("#curves .curves-view:has-text('top-label confidence (correct or not)')")
    assert page.locator("#curves .site-curves").count() == 1  # clinic_a, version 1 only
    d = page.locator("#curves .site-curves[data-site=clinic_a]")
    assert " correct, " in d.inner_text() and "confidence ≥" in d.locator("circle.roc-point").first.inner_html()
    page.click("#lang-toggle")
    assert "最高类别置信度（是否正确）" in page.inner_text("#curves .curves-view") and "正确" in d.inner_text()
