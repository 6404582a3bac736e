"""The doctor's workstation page in a real browser (Debian's Chromium driven by Playwright): log in,
fill in a first visit, read the answer, see the server's validation next to a field, switch language,
record a decision and find it in the site's DuckDB file. Saves docs/workstation*.png."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DOCS = Path(__file__).resolve().parents[3] / "docs"
VISIT = {"age": "62", "heart_rate": "100", "spo2": "96", "resp_rate": "20", "temperature": "37.2", "sbp": "165",
         "dbp": "96", "pain_score": "6"}
CHOICES = {"sex": "M", "complaint": "chest_pain", "avpu": "A", "arrival": "walk_in", "hx_hypertension": "true",
           "hx_heart_disease": "true"}


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium not installed (apt-get install chromium; .ci/run does it)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, served):
    context = browser.new_context(viewport={"width": 1366, "height": 768}, base_url=served.base_url, locale="zh-CN")
    # Everything the page loads must come from the node itself.
    foreign = []
    context.route("**/*", lambda route: (route.continue_() if route.request.url.startswith(served.base_url)
                                         else (foreign.append(route.request.url), route.abort())))
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert foreign == [] and errors == []


def log_in(page, served, role="doctor"):
    page.goto("/")
    page.fill("#token-input", served.token[role])
    page.click("#login-button")


def fill_visit(page, **changes):
    page.wait_for_selector("#f-heart_rate")
    for name, value in {**VISIT, **changes}.items():
        page.fill(f"#f-{name}", value)
    for name, value in CHOICES.items():
        page.select_option(f"#f-{name}", value)


def test_score_read_switch_language_and_record_a_decision(page, served):
    log_in(page, served)
    fill_visit(page)
    page.fill("#encounter-id", "MZ-browser-1")
    page.click("#score-button")
    page.wait_for_selector("#result:not([hidden])")

    answer = served.spy.inner.assess([{**dict.fromkeys(served.spy.spec.feature_names), **{
        k: float(v) for k, v in VISIT.items()}, **{k: (v == "true" if v in ("true", "false") else v)
                                                  for k, v in CHOICES.items()}}])[0]
    badge = page.locator("#triage-badge")
    assert badge.inner_text() == answer.triage.title["zh"]
    assert f"level-{answer.triage.level}" in badge.get_attribute("class")
    assert page.inner_text("#risk-value") == f"{round(answer.referral_risk.probability * 100)}%"
    assert page.inner_text("#tier-title") == answer.tier.title["zh"]
    assert page.locator("#diagnoses li").count() == min(3, len(answer.diagnoses))
    assert answer.diagnoses[0].title["zh"] in page.inner_text("#diagnoses")
    assert page.locator("#explanation svg rect").count() == len(answer.explanation)
    ups = sum(c.direction == "up" for c in answer.explanation)
    assert page.locator("#explanation rect.bar-up").count() == ups
    assert page.inner_text("#disclaimer") == answer.disclaimer["zh"]
    assert page.locator("#model-links a").count() == len(answer.models)
    assert page.inner_text("#not-recorded") == "未记录（按缺失处理）：糖尿病史、慢阻肺史"  # left empty in the form
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "workstation.png"))

    page.click("#model-links a[data-task=referral_risk]")  # the card is fetched with the token, shown as text
    page.wait_for_selector("#card-dialog[open]")
    assert served.spy.model_card("referral_risk").splitlines()[0].lstrip("# ") in page.inner_text("#card-body")
    page.click("#card-close")

    page.click("#lang-toggle")
    assert page.inner_text("#score-button") == "Assess"
    assert page.inner_text("#triage-badge") == answer.triage.title["en"]
    assert page.inner_text("#tier-title") == answer.tier.title["en"]
    assert page.inner_text("#disclaimer") == answer.disclaimer["en"]
    assert "Heart rate" in page.inner_text("#field-heart_rate label")
    assert page.evaluate("document.documentElement.lang") == "en"
    page.screenshot(path=str(DOCS / "workstation-en.png"))
    page.reload()  # the choice of language is remembered; the token stays for this tab
    page.wait_for_selector("#f-heart_rate")
    assert page.inner_text("#score-button") == "Assess"
    page.click("#lang-toggle")
    assert page.inner_text("#score-button") == "评估"
    assert "心率" in page.inner_text("#field-heart_rate label")

    fill_visit(page, heart_rate="130")
    page.fill("#encounter-id", "MZ-browser-1")
    page.click("#score-button")
    page.wait_for_selector("#result:not([hidden])")
    page.fill("#f-heart_rate", "100")  # the answer shown no longer matches the form: no decision on it
    assert page.is_visible("#stale-note") and page.is_disabled("#record-button")
    page.click("#score-button")
    page.wait_for_selector("#stale-note", state="hidden")
    assert page.inner_text("#risk-value") == f"{round(answer.referral_risk.probability * 100)}%"
    page.check("#decision-county")
    page.fill("#decision-note", "持续胸痛，转县医院心内科")
    page.click("#record-button")
    page.wait_for_selector("#decision-confirmation:not([hidden])")
    assert "已记录" in page.inner_text("#decision-confirmation")

    rows = served.site_rows("SELECT decision, referred_tier, note, inputs, referral_risk FROM decisions "
                            "WHERE encounter_id = 'MZ-browser-1'")
    assert len(rows) == 1
    decision, tier, note, inputs, risk = rows[0]
    assert (decision, tier, note) == ("refer", "county", "持续胸痛，转县医院心内科")
    assert json.loads(inputs)["heart_rate"] == 100 and json.loads(inputs)["hx_copd"] is None
    assert risk == pytest.approx(answer.referral_risk.probability)


def test_server_validation_is_shown_next_to_the_field(page, served):
    log_in(page, served)
    fill_visit(page, heart_rate="900", spo2="130", temperature="abc")
    page.click("#score-button")
    page.wait_for_selector("#field-heart_rate.invalid")
    assert "不能大于 250" in page.inner_text("#error-heart_rate")
    assert "不能大于 100" in page.inner_text("#error-spo2")
    assert "应为数字" in page.inner_text("#error-temperature")
    assert page.inner_text("#error-age") == ""
    assert page.is_hidden("#result")
    page.click("#lang-toggle")
    assert "less than or equal to 250" in page.inner_text("#error-heart_rate")
    page.click("#lang-toggle")

    page.fill("#f-heart_rate", "")  # now not recorded: accepted, and said so
    page.fill("#f-spo2", "96")
    page.fill("#f-temperature", "37.2")
    page.click("#score-button")
    page.wait_for_selector("#result:not([hidden])")
    assert "心率" in page.inner_text("#not-recorded")
    assert page.locator(".field.invalid").count() == 0


def test_only_a_doctors_token_opens_the_workstation(page, served):
    page.goto("/")
    page.fill("#token-input", "fj_not-a-token")
    page.click("#login-button")
    page.wait_for_selector("#login-error:has-text('令牌无效')")
    log_in(page, served, role="commissioner")
    page.wait_for_selector("#login-error:has-text('commissioner')")
    assert page.is_hidden("#workstation")
