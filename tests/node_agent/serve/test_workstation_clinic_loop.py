"""The clinic's loop on the doctor's page, in a real browser (Debian's Chromium through Playwright): record
an outcome, refer up and print the slip (A5/A4, zh and en), follow the referral to the follow-up list, see
a critical alert and an infectious-risk flag, use the page on a 390 px phone, and read a model card in zh-CN
and in English as rendered HTML. Also the referral API's rules, over HTTP. Saves docs/referral-slip*.png,
docs/workstation-alert.png and docs/workstation-phone.png."""

from __future__ import annotations

import json
import re

from coordinator.model_card import LIMITS, build_model_cards
from models.policy import load_policy
from node_agent.serve.routes.referrals import policy_of
from node_agent.serve.syndromes import evaluate
from tests.coordinator.service.test_model_card_languages import _outcome
from tests.node_agent.serve import test_workstation as workstation
from tests.node_agent.serve.conftest import SpyAdvisor
from tests.node_agent.serve.test_score import PATIENT
from tests.node_agent.serve.test_workstation import CHOICES, DOCS, VISIT, log_in

browser, page = workstation.browser, workstation.page  # the same fixtures: Debian's Chromium, no foreign request

SICK = {"age": "84", "heart_rate": "150", "spo2": "82", "resp_rate": "36", "temperature": "38.9", "sbp": "82",
        "dbp": "48", "pain_score": "8"}
SICK_CHOICES = {**CHOICES, "complaint": "dyspnoea", "avpu": "P", "arrival": "ambulance", "hx_copd": "true"}
WORDS = {"升高风险", "明显升高风险", "降低风险", "明显降低风险"}


def assess(page, encounter: str, visit: dict = VISIT, choices: dict = CHOICES) -> None:
    page.wait_for_selector("#f-heart_rate")
    for name, value in visit.items():
        page.fill(f"#f-{name}", value)
    for name, value in choices.items():
        page.select_option(f"#f-{name}", value)
    page.fill("#encounter-id", encounter)
    page.click("#score-button")
    page.wait_for_selector("#result:not([hidden])")


def decide(page, choice: str, note: str = "") -> None:
    page.check(f"#decision-{choice}")
    page.fill("#decision-note", note)
    page.click("#record-button")
    page.wait_for_selector("#decision-confirmation:not([hidden])")


def record(served, visit: dict, choices: dict) -> dict:
    """The record the page sent for this visit, as the advisor sees it."""
    as_value = {k: (v == "true" if v in ("true", "false") else v) for k, v in choices.items()}
    return {**dict.fromkeys(served.spy.spec.feature_names), **{k: float(v) for k, v in visit.items()}, **as_value}


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.scrollingElement.scrollWidth") <= page.viewport_size["width"]


def pdf_size(pdf: bytes) -> tuple[float, float]:
    x0, y0, x1, y1 = map(float, re.search(rb"/MediaBox\s*\[\s*([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+)", pdf).groups())
    return x1 - x0, y1 - y0


def test_record_an_outcome_for_a_pending_decision(page, served):
    log_in(page, served)
    assess(page, "MZ-loop-outcome")
    decide(page, "treat_here")
    (decision_id,) = served.site_rows("SELECT decision_id FROM decisions WHERE encounter_id = 'MZ-loop-outcome'")[0]

    page.click("#view-outcomes")
    item = page.locator(f"#pending-list li[data-decision='{decision_id}']")
    item.wait_for()
    assert "MZ-loop-outcome" in item.inner_text() and page.is_hidden("#workstation")
    item.locator("button[type=submit]").click()  # nothing chosen: said so, nothing stored
    assert "请至少选择一项结局" in item.inner_text()
    item.locator("select[name=referred_up]").select_option("1")
    item.locator("select[name=triage_level]").select_option("2")
    item.locator("input[name=note]").fill("次日转县医院住院")
    item.locator("button[type=submit]").click()
    page.wait_for_selector("#outcome-saved:has-text('已记录结局')")
    assert page.locator(f"#pending-list li[data-decision='{decision_id}']").count() == 0

    (labels, note), = served.site_rows("SELECT labels, note FROM outcomes WHERE decision_id = ?", [decision_id])
    assert json.loads(labels) == {"referred_up": "1", "triage_level": "2"} and note == "次日转县医院住院"
    with served.client("doctor") as client:  # the server's list no longer has it either
        pending = client.get("/api/v1/decisions/pending").raise_for_status().json()
    assert decision_id not in [d["decision_id"] for d in pending]


def test_refer_up_print_the_slip_and_follow_the_referral_back_down(page, served):
    log_in(page, served)
    assess(page, "MZ-loop-slip")
    answer = served.spy.inner.assess([record(served, VISIT, CHOICES)])[0]
    decide(page, "county", "持续胸痛，转县医院心内科")
    page.click("#slip-button")
    page.wait_for_selector("#slip-view:not([hidden])")
    slip = page.inner_text("#slip")
    assert "双向转诊单" in slip and "MZ-loop-slip" in slip and "持续胸痛，转县医院心内科" in slip
    assert page.inner_text("#slip-receiving") == "县/区级医院"
    assert answer.triage.title["zh"] in slip and f"{round(answer.referral_risk.probability * 100)}%" in slip
    assert answer.tier.title["zh"] in slip and answer.tier.reason["zh"] in slip
    assert all(d.title["zh"] in slip for d in answer.diagnoses[:3])
    assert re.search(r"心率：\s*100 次/分", slip) and re.search(r"主诉类别：\s*胸痛", slip)  # first-visit data
    assert "test doctor" in slip and "(" not in page.inner_text(".slip-row:has-text('转诊医生')")

    page.emulate_media(media="print")  # on paper: the slip only, A5 unless A4 is chosen
    assert page.is_visible("#slip") and page.is_hidden("#workstation") and page.is_hidden(".slip-toolbar")
    assert page.is_hidden(".topbar")
    DOCS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 620, "height": 880})  # about the slip's width on paper, for the picture
    page.screenshot(path=str(DOCS / "referral-slip.png"), full_page=True)
    page.set_viewport_size({"width": 1366, "height": 768})
    width, height = pdf_size(page.pdf(prefer_css_page_size=True))
    assert (round(width / 72 * 25.4), round(height / 72 * 25.4)) == (148, 210)  # A5 in mm
    page.emulate_media(media="screen")
    page.select_option("#slip-paper", "A4")
    page.emulate_media(media="print")
    width, height = pdf_size(page.pdf(prefer_css_page_size=True))
    assert (round(width / 72 * 25.4), round(height / 72 * 25.4)) == (210, 297)
    page.emulate_media(media="screen")

    page.click("#slip-lang")  # the same slip in English
    assert "Referral slip" in page.inner_text("#slip h1")
    assert page.inner_text("#slip-receiving") == "County/district hospital"
    assert answer.triage.title["en"] in page.inner_text("#slip")
    page.screenshot(path=str(DOCS / "referral-slip-en.png"), full_page=True)
    page.click("#slip-lang")
    page.click("#slip-close")

    (decision_id,) = served.site_rows("SELECT decision_id FROM decisions WHERE encounter_id = 'MZ-loop-slip'")[0]
    page.click("#view-referrals")
    item = page.locator(f"#referral-list li[data-decision='{decision_id}']")
    item.wait_for()
    assert item.get_attribute("data-status") == "referred"
    item.locator("button[data-action=received]").click()
    page.wait_for_selector(f"#referral-list li[data-decision='{decision_id}'][data-status=received]")
    item.locator("button[data-action=referred_back]").click()  # a follow-up plan is needed
    assert "随访计划" in item.inner_text()
    item.locator(".plan-input").fill("两周后社区复诊，监测血压")
    item.locator("button[data-action=referred_back]").click()
    follow = page.locator(f"#followup-list li[data-decision='{decision_id}']")
    follow.wait_for()
    assert "两周后社区复诊，监测血压" in follow.inner_text() and "已下转" in follow.inner_text()
    rows = served.site_rows("SELECT status, plan FROM referrals WHERE decision_id = ?", [decision_id])
    assert rows == [("referred_back", "两周后社区复诊，监测血压")]
    events = served.site_rows("SELECT status FROM referral_events WHERE decision_id = ? ORDER BY changed_at", [decision_id])
    assert [e[0] for e in events] == ["referred", "received", "referred_back"]


def test_a_critical_alert_and_an_infectious_risk_flag(page, served):
    log_in(page, served)
    assess(page, "MZ-loop-alert", SICK, SICK_CHOICES)
    answer = served.spy.inner.assess([record(served, SICK, SICK_CHOICES)])[0]
    expected = evaluate(record(served, SICK, SICK_CHOICES), answer.triage.level, answer.referral_risk.probability,
                        policy_of(served.spy.inner))
    critical = [a for a in expected if a.kind == "critical"]
    assert critical, "the visit must be critical for this test to mean anything"
    page.wait_for_selector("#alerts:not([hidden])")
    boxes = page.locator("#alerts .alert-critical")
    assert boxes.count() == len(critical)
    for i, alert in enumerate(critical):
        assert boxes.nth(i).inner_text().replace("\n", " ").count(alert.reason["zh"]) == 1
    flag = page.locator("#alerts .alert-infectious[data-code=febrile_respiratory]")
    assert "发热伴呼吸道症状" in flag.inner_text() and "38.9°C" in flag.inner_text()
    assert page.locator("#alerts [role=alert]").count() == len(expected)
    page.screenshot(path=str(DOCS / "workstation-alert.png"))
    page.click("#lang-toggle")
    assert "Infectious risk" in page.inner_text("#alerts")
    page.click("#lang-toggle")

    page.fill("#f-temperature", "36.6")  # a new answer replaces the alerts
    page.select_option("#f-complaint", "chest_pain")
    page.click("#score-button")
    page.wait_for_selector("#stale-note", state="hidden")
    page.wait_for_function("!document.querySelector('#alerts .alert-infectious')")


def test_the_page_on_a_phone(browser, served):
    context = browser.new_context(viewport={"width": 390, "height": 844}, base_url=served.base_url, locale="zh-CN",
                                  is_mobile=True, has_touch=True, device_scale_factor=2)
    phone = context.new_page()
    errors = []
    phone.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        log_in(phone, served)
        phone.wait_for_selector("#f-heart_rate")
        assert no_horizontal_scroll(phone)
        tags = phone.locator("#model-version .model-tag")  # all three models and their versions, in the header
        assert tags.count() == 3 and phone.is_visible("#model-version")
        for task, ref in served.holder.current.models.items():
            assert f"v{ref.version}" in phone.inner_text(f"#model-version [data-task={task}]")
        assess(phone, "MZ-loop-phone", SICK, SICK_CHOICES)
        assert no_horizontal_scroll(phone)
        words = phone.locator("#explanation text.word").all_text_contents()  # the bars say what they do, in words
        answer = served.spy.inner.assess([record(served, SICK, SICK_CHOICES)])[0]
        assert len(words) == len(answer.explanation) and set(words) <= WORDS
        phone.screenshot(path=str(DOCS / "workstation-phone.png"), full_page=True)

        phone.click("#model-links a[data-task=referral_risk]")  # the model card, rendered, not raw markdown
        phone.wait_for_selector("#card-dialog[open]")
        body = phone.inner_text("#card-body")
        assert not re.search(r"^#|\*\*|\|---", body, re.MULTILINE) and phone.locator("#card-body h2").count() >= 1
        assert no_horizontal_scroll(phone)
        phone.click("#card-close")

        decide(phone, "tertiary", "血氧 82%，转三级医院")
        phone.click("#slip-button")
        phone.wait_for_selector("#slip-view:not([hidden])")
        assert no_horizontal_scroll(phone)
        phone.click("#slip-close")
        for view in ("#view-outcomes", "#view-referrals"):
            phone.click(view)
            phone.wait_for_selector("#clinic-error", state="attached")
            phone.wait_for_function("document.querySelectorAll('.clinic-list li').length > 0")
            assert no_horizontal_scroll(phone), view
        phone.click("#lang-toggle")
        assert no_horizontal_scroll(phone)
    finally:
        context.close()
    assert errors == []


class CardedAdvisor(SpyAdvisor):
    """The served advisor, with the cards a registered version carries (``coordinator.model_card``: headings,
    the per-site table, lists) instead of its test double's; keeps the languages the page asked for."""

    def __init__(self, inner, cards: dict[str, str]) -> None:
        super().__init__(inner)
        self.cards, self.asked = cards, []

    def model_card(self, task: str, lang: str = "en") -> str:
        self.asked.append((task, lang))
        return self.cards[lang]


def test_the_model_card_in_english_is_rendered_not_raw_markdown(page, fresh):
    ref = fresh.spy.models["referral_risk"]
    cards, _ = build_model_cards(_outcome("referral_risk"), name=ref.name, version=ref.version, policy=load_policy())
    carded = CardedAdvisor(fresh.spy.inner, cards)
    fresh.holder.swap(carded)
    log_in(page, fresh)
    page.wait_for_selector("#f-heart_rate")
    page.click("#lang-toggle")
    assert page.evaluate("document.documentElement.lang") == "en"
    assess(page, "MZ-loop-card-en")
    page.click("#model-links a[data-task=referral_risk]")
    page.wait_for_selector("#card-dialog[open]")
    assert carded.asked == [("referral_risk", "en")]  # the page's language, not the API's zh-CN default

    body = page.inner_text("#card-body")
    assert not re.search(r"^\s*(#|\|)|\*\*|-{3}", body, re.MULTILINE), body  # no markdown left as text
    assert page.text_content("#card-body h2") == f"Model card: {ref.name} version {ref.version}"
    headings = page.locator("#card-body h3").all_text_contents()  # the card's "##", in English
    assert headings[:3] == ["Intended use", "Training", "Performance per site (held-out rows)"]
    assert "Known limits" in headings and "Tier policy (governance settings)" in headings
    table = page.locator("#card-body table.card-table")
    assert table.count() == 1
    assert table.locator("thead th").all_text_contents()[:4] == ["site", "train rows", "test rows", "global"]
    assert table.locator("tbody tr td:first-child").all_text_contents() == ["clinic_a", "clinic_b"]
    assert table.locator("tbody tr").first.locator("td.num").first.text_content() == "150"  # |---:| right-aligned
    assert page.locator("#card-body li").all_text_contents() == LIMITS
    assert page.locator("#card-body strong").count() >= 1
    page.click("#card-close")


# ---- the referral API's rules, over HTTP ------------------------------------------------------------------
def _decision(served, decision: str = "refer") -> str:
    body = {"encounter_id": "MZ-api-referral", "inputs": PATIENT, "decision": decision,
            "referred_tier": "tertiary" if decision == "refer" else None,
            "assessment": {"models": {"referral_risk": {"name": "m", "version": "1"}}, "referral_risk": 0.7,
                           "tier": "tertiary", "triage_level": "2"}}
    with served.client("doctor") as client:
        return client.post("/api/v1/decisions", json=body).raise_for_status().json()["decision_id"]


def test_referral_rules(served):
    refer, keep = _decision(served), _decision(served, "treat_here")
    with served.client("doctor") as client:
        assert client.post("/api/v1/referrals", json={"decision_id": keep}).status_code == 409
        assert client.post("/api/v1/referrals", json={"decision_id": "nope"}).status_code == 404
        created = client.post("/api/v1/referrals", json={"decision_id": refer, "reason": "SpO2 低",
                                                         "diagnoses": [{"code": "J00-J99", "probability": 0.6}]})
        assert created.status_code == 201
        slip = created.json()
        assert slip["status"] == "referred" and slip["receiving_tier"] == "tertiary"
        assert slip["diagnoses"][0]["title"]["zh"].startswith("呼吸系统疾病")
        assert [a["code"] for a in slip["alerts"]] == ["triage", "febrile_respiratory"]  # PATIENT: 37.9 °C, dyspnoea
        assert client.post("/api/v1/referrals", json={"decision_id": refer}).status_code == 409  # once only
        url = f"/api/v1/referrals/{refer}/status"
        assert client.post(url, json={"status": "referred_back"}).status_code == 422  # no plan
        assert client.post(url, json={"status": "closed"}).status_code == 409  # not from referred
        assert client.post(url, json={"status": "referred_back", "plan": "社区随访"}).json()["status"] == "referred_back"
        assert client.post(url, json={"status": "received"}).status_code == 409  # no way back up
        follow = client.get("/api/v1/referrals", params={"status": "referred_back"}).json()
        assert refer in [r["decision_id"] for r in follow] and all(r["status"] == "referred_back" for r in follow)
        assert client.get("/api/v1/referrals/nope").status_code == 404
    with served.client("commissioner") as client:  # patients' data: doctors and site admins only
        assert client.get("/api/v1/referrals").status_code == 403
