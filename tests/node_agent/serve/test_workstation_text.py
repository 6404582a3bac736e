"""The free-text chief complaint on the doctor's page, in a real browser (Debian's Chromium via
Playwright): typed into the form, explained by its own words ("“发热” raises the risk", never a hashed
column), and tied to the models in use: a hint says which models read it, and the page does not send
it when none does."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from models.spec import load_task
from node_agent.serve import AdvisorHolder, TokenStore, create_app
from tests.node_agent.serve.conftest import SpyAdvisor, issue_tokens
from tests.node_agent.serve.test_workstation import (
    CHROMIUM,
    CHROMIUM_ARGS,
    fill_visit,
    log_in,
)
from tests.node_agent.serve.trained_advisor import trained_advisor, trained_text_advisor
from tests.servers import running

sync_api = pytest.importorskip("playwright.sync_api")

COMPLAINT = "发热三天，咳嗽咳痰，胸闷气促"


class IgnoresText(SpyAdvisor):
    """An advisor whose input has a complaint text that none of its models reads (``tasks`` says so)."""

    def __init__(self) -> None:
        super().__init__(trained_advisor())
        self.tasks = self.inner.tasks
        self.spec = load_task("referral_risk_text")

    def assess(self, records):
        self.calls.append(records)
        return self.inner.assess([{k: v for k, v in r.items() if k != "complaint_text"} for r in records])


@dataclass
class Clinic:
    base_url: str
    token: dict[str, str]
    spy: SpyAdvisor


@contextlib.contextmanager
def _serving(advisor: SpyAdvisor, site_dir: Path) -> Iterator[Clinic]:
    if not hasattr(advisor, "tasks"):
        advisor.tasks = advisor.inner.tasks  # the spy says per model what it reads, as the advisor does
    tokens = TokenStore.for_site(site_dir)
    with running(create_app(AdvisorHolder(advisor), site_dir=site_dir, tokens=tokens)) as url:
        yield Clinic(url, issue_tokens(tokens), advisor)


@pytest.fixture(scope="module")
def referral_reads_text(tmp_path_factory) -> Iterator[Clinic]:
    with _serving(SpyAdvisor(trained_text_advisor()), tmp_path_factory.mktemp("text") / "clinic") as clinic:
        yield clinic


@pytest.fixture(scope="module")
def triage_reads_text(tmp_path_factory) -> Iterator[Clinic]:
    advisor = SpyAdvisor(trained_text_advisor(text_tasks=("triage",)))
    with _serving(advisor, tmp_path_factory.mktemp("text") / "clinic") as clinic:
        yield clinic


@pytest.fixture(scope="module")
def none_reads_text(tmp_path_factory) -> Iterator[Clinic]:
    with _serving(IgnoresText(), tmp_path_factory.mktemp("text") / "clinic") as clinic:
        yield clinic


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium not installed (apt-get install chromium; .ci/run does it)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture()
def open_page(browser):
    contexts, errors = [], []

    def open_(clinic: Clinic):
        context = browser.new_context(viewport={"width": 1366, "height": 768}, base_url=clinic.base_url,
                                      locale="zh-CN")
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield open_
    for context in contexts:
        context.close()
    assert errors == []


def _score(page, clinic: Clinic) -> dict:
    """Fill in a febrile visit with its complaint (if the field takes one), assess; the body sent."""
    log_in(page, clinic)
    fill_visit(page, temperature="38.6")
    if page.is_enabled("#f-complaint_text"):
        page.fill("#f-complaint_text", COMPLAINT)
    with page.expect_request(re.compile(r".*/api/v1/score$")) as sent:
        page.click("#score-button")
    page.wait_for_selector("#result:not([hidden])")
    return json.loads(sent.value.post_data)


def _words(clinic: Clinic) -> list:
    """The word items of the answer to the record the page sent last, recomputed by the advisor."""
    [answer] = clinic.spy.inner.assess([clinic.spy.calls[-1][0]])
    return [c for c in answer.explanation if c.word]


def test_the_complaint_is_explained_in_its_own_words(open_page, referral_reads_text):
    clinic = referral_reads_text
    page = open_page(clinic)
    body = _score(page, clinic)
    assert body["complaint_text"] == COMPLAINT
    assert page.inner_text("#text-hint-complaint_text") == "仅上转风险模型读取主诉原文，其他模型不读取。"
    assert "含主诉原文" in page.locator("#model-version [data-task=referral_risk]").inner_text()
    words = _words(clinic)
    assert words and all(c.value in "发热三天 咳嗽咳痰 胸闷气促" for c in words)
    labels = page.locator("#explanation text.word-label").all_text_contents()
    assert labels == [f"主诉 (原文)：“{c.value}”" for c in words]
    rows = page.locator("#explanation g.push-word")
    assert rows.count() == len(words)
    for i, c in enumerate(words):
        said = rows.nth(i).locator("text.word").text_content()
        assert said.endswith("升高风险" if c.contribution > 0 else "降低风险")
    chart = page.text_content("#explanation")
    assert "complaint_text" not in chart and "#" not in chart  # a word, never a hashed column
    page.click("#lang-toggle")
    english = page.locator("#explanation text.word-label").all_text_contents()
    assert english == [f"Chief complaint (text)：\u201c{c.value}\u201d" for c in words]


def test_a_hint_names_the_one_model_that_reads_the_complaint(open_page, triage_reads_text):
    clinic = triage_reads_text
    page = open_page(clinic)
    body = _score(page, clinic)
    assert body["complaint_text"] == COMPLAINT  # the triage model reads it
    assert page.inner_text("#text-hint-complaint_text") == "仅分诊模型读取主诉原文，其他模型不读取。"
    assert _words(clinic) == [] and page.locator("#explanation g.push-word").count() == 0
    assert "含主诉原文" in page.locator("#model-version [data-task=triage]").inner_text()
    assert "含主诉原文" not in page.locator("#model-version [data-task=referral_risk]").inner_text()


def test_a_complaint_no_model_reads_is_not_sent(open_page, none_reads_text):
    clinic = none_reads_text
    page = open_page(clinic)
    page.set_viewport_size({"width": 390, "height": 844})
    body = _score(page, clinic)
    assert "complaint_text" not in body and clinic.spy.calls[-1][0]["complaint_text"] is None
    assert page.is_disabled("#f-complaint_text")
    assert page.inner_text("#text-hint-complaint_text").startswith("当前使用的模型不读取主诉原文")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
