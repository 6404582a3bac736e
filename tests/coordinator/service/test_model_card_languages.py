"""The model card in zh-CN and English (issue #14): one JSON card rendered in each language from one
string table (``coordinator.model_card``), served at ``GET .../versions/{v}/card?lang=zh-CN|en`` (zh-CN
by default; a version registered before the Chinese card existed falls back to its English card and
says so in ``Content-Language``). ``register_outcome`` logging both files and a derived version's
cards: test_registry_policy; the console drawing the card in its language: test_console_sites_browser."""

from __future__ import annotations

import re

import pytest

from coordinator.model_card import (
    CARD_FILES,
    CARD_LANGS,
    LIMITS,
    build_model_cards,
    intended_use,
)
from coordinator.outcome import FederationOutcome
from models.advisor import CARD_FILES as NODE_CARD_FILES
from models.encoding import Encoder
from models.policy import load_policy
from models.spec import builtin_tasks, load_task
from tests.coordinator.service.bundle_registry import untrained_models
from tests.coordinator.service.conftest import TASK

# Fixed sentences of the English template: none may appear in a Chinese card.
KNOWN_SENTENCES = [*LIMITS, "No site's rows or individual update left the site in clear.", "Intended use",
                   "Performance per site (held-out rows)", "Known limits", "expected calibration error, 10 bins",
                   "fitted federatedly", "otherwise community", "Critical alert at risk", "first-visit features",
                   "Model card:", "site's choice", "personalised"]
# Four English words in a row, as in a sentence (a list of feature names is separated by commas)
ENGLISH_RUN = re.compile(r"[A-Za-z][a-z']+(?: [A-Za-z][a-z']+){3,}")


def _outcome(task: str) -> FederationOutcome:
    model = untrained_models()[task]
    return FederationOutcome(task=model.spec, encoding=model.encoding, flat=model.flat,
                             n_inputs=Encoder(model.spec, model.encoding).width, calibration=model.calibration,
                             sites={"clinic_a": {"auroc": 0.74, "kappa": 0.5, "ece": 0.04, "n": 50.0},
                                    "clinic_b": {"auroc": 0.70, "n": 40.0}},
                             rounds=[{"round": 1, "auroc": 0.66}, {"round": 2, "auroc": 0.71}], train_rows={"clinic_a": 150})


@pytest.mark.parametrize("task", ["triage", "diagnosis", "referral_risk"])
def test_the_chinese_card_translates_every_fixed_sentence_and_keeps_numbers_and_names(task):
    cards, card = build_model_cards(_outcome(task), name=f"fenji-{task}", version="7", policy=load_policy())
    assert set(cards) == set(CARD_LANGS) == set(CARD_FILES)
    zh, en = cards["zh-CN"], cards["en"]
    assert zh.startswith(f"# 模型说明：fenji-{task} 第 7 版") and en.startswith(f"# Model card: fenji-{task} version 7")
    for sentence in KNOWN_SENTENCES:
        assert sentence not in zh, sentence
    assert sum(sentence in en for sentence in KNOWN_SENTENCES) >= len(LIMITS) + 5  # the list is the template's
    assert not ENGLISH_RUN.findall(zh), ENGLISH_RUN.findall(zh)
    assert ENGLISH_RUN.findall(en)  # the check can fail
    for kept in ("clinic_a", "clinic_b", "0.740", "150", "60%", "fenji-", card["model"]["label"]["name"],
                 *card["model"]["features"][:3]):
        assert kept in zh and kept in en, kept
    assert ("## 已知局限" in zh and "## 分级策略（治理设置）" in zh and "## 各站点表现（留出数据）" in zh)
    assert zh.count("\n| ") == en.count("\n| ")  # the same table, row for row


def test_every_shipped_task_has_its_intended_use_in_chinese():
    for task in builtin_tasks():
        spec = load_task(task)
        zh = intended_use(task, spec.description.strip(), "zh-CN")
        assert "暂无中文译文" not in zh and not ENGLISH_RUN.findall(zh), task


def test_an_edited_task_description_shows_its_english_marked_not_a_stale_translation():
    zh = intended_use("triage", "Triage level, now also for walk-in night clinics.", "zh-CN")
    assert zh.startswith("（暂无中文译文，以下为英文原文）") and "walk-in night clinics" in zh


def test_the_node_reads_the_files_the_coordinator_writes():
    assert NODE_CARD_FILES == CARD_FILES


@pytest.fixture()
def with_cards(service, tmp_path):
    """Version 2 with its cards in both languages (as ``register_outcome`` logs them), version 3 with an
    English card only (registered before the Chinese card existed); version 1 has none."""
    client = service.coordinator.registry.client
    cards, _ = build_model_cards(_outcome(TASK), name=f"fenji-{TASK}", version="2", policy=load_policy())
    for version, langs in (("2", CARD_LANGS), ("3", ("en",))):
        run_id = client.get_model_version(f"fenji-{TASK}", version).run_id
        for lang in langs:
            client.log_text(run_id, cards[lang].replace("第 2 版", f"第 {version} 版"), CARD_FILES[lang])
    return service, cards


def test_the_card_endpoint_serves_either_language_zh_cn_by_default(with_cards):
    service, cards = with_cards
    path = f"/api/v1/models/{TASK}/versions/{{}}/card"
    with service.client("data_scientist") as client:
        default, zh, en = (client.get(path.format(2), params=p) for p in ({}, {"lang": "zh-CN"}, {"lang": "en"}))
        assert default.text == zh.text == cards["zh-CN"] and en.text == cards["en"]
        assert (default.headers["content-language"], en.headers["content-language"]) == ("zh-CN", "en")
        assert default.headers["content-type"].startswith("text/markdown")
        legacy = client.get(path.format(3))
        assert legacy.status_code == 200 and legacy.headers["content-language"] == "en"
        assert legacy.text.startswith(f"# Model card: fenji-{TASK}")
        assert client.get(path.format(1)).status_code == 404
        assert client.get(path.format(2), params={"lang": "fr"}).status_code == 422
