"""The model card every registered model version carries: JSON for programs, and markdown for people
in each of the city's languages (zh-CN and English), rendered from that JSON with one string table.

Every fixed sentence is in the table in both languages; numbers, site, feature, class and metric names
stay as they are. The English card is ``model_card.md`` (what versions registered before the Chinese
card existed carry, and the version's description in MLflow); the Chinese one ``model_card.zh-CN.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from models.policy import TierPolicy

__all__ = ["CARD_FILES", "CARD_LANGS", "DEFAULT_CARD_LANG", "LIMITS", "build_model_card", "build_model_cards",
           "card_data", "policy_text", "render_model_card"]

CARD_LANGS = ("zh-CN", "en")
DEFAULT_CARD_LANG = "zh-CN"  # the city's own language; English for the visiting experts and the literature
CARD_FILES = {"en": "model_card.md", "zh-CN": "model_card.zh-CN.md"}

LIMITS = [
    "Decision support for a doctor at the first visit; it does not diagnose and does not replace clinical judgement.",
    "Valid only for patients like those of the training sites; a new site should check its own metrics "
    "(the node agent's held-out evaluation) before relying on it.",
    "A feature a site never records (e.g. SpO2 without a pulse oximeter) is scored as 'not recorded', which "
    "carries less information: predictions there are less sharp.",
    "Metrics on sites with few held-out rows are noisy (a few dozen rows give about ±0.05 AUROC).",
    "Calibration is fitted on the sites' training rows (one encrypted round); site-level personalisation, "
    "where a site chose it, stays at that site and is not part of this version.",
    "Not validated prospectively; labels are as recorded by the sites (triage and outcome labels are noisy).",
]
_LIMITS_ZH = [
    "供医生首诊时辅助决策之用；它不做诊断，也不能替代临床判断。",
    "仅适用于与训练站点患者相似的人群；新站点在依赖它之前，应先核对本站点自己的指标（节点代理的留出评估）。",
    "站点从不记录的特征（例如没有脉搏血氧仪时的 SpO2）按“未记录”计分，所含信息较少：这些站点的预测区分度较低。",
    "留出数据行少的站点，其指标波动较大（几十行数据的 AUROC 误差约为 ±0.05）。",
    "校准在各站点的训练数据上拟合（一轮加密计算）；站点自选的个性化只留在该站点，不属于本版本。",
    "未经前瞻性验证；标签按各站点的记录为准（分诊和结局标签含有噪声）。",
]

_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "# Model card: {name} version {version}",
        "intended_use": "## Intended use",
        "predicts": "Predicts **{label}** ({kind}: {classes}) from {n} first-visit features: {features}.",
        "training": "## Training",
        "federated": "Federated across {sites} sites, {rounds} rounds of {encrypted}FedAvg; model family {family}. "
                     "No site's rows or individual update left the site in clear.",
        "encrypted": "CKKS-encrypted ",
        "performance": "## Performance per site (held-out rows)",
        "columns": "site|train rows|test rows|global|personalised|local-only|pooled|{secondary} (global)|ECE global|"
                   "ECE personalised|site's choice",
        "metric_binary": "Metric: AUROC; ECE: expected calibration error, 10 bins.",
        "metric_multi": "Metric: macro one-vs-rest AUROC; ECE: expected calibration error, 10 bins.",
        "calibration": "## Calibration",
        "platt": "Platt scaling fitted federatedly: slope {slope}, intercept {intercept}.",
        "temperature": "Temperature scaling fitted federatedly: T = {temperature}.",
        "none": "None.",
        "policy": "## Tier policy (governance settings)",
        "policy_text": "Tertiary if triage level ≤ {t_level} or risk ≥ {t_risk}; county if triage level ≤ {c_level} "
                       "or risk ≥ {c_risk}; otherwise community. Critical alert at risk ≥ {critical}.",
        "limits": "## Known limits",
        "change": "## Change from version {base}: tier policy",
        "change_text": "The tier-policy thresholds were edited by {by} (reason: {reason}). The parameters, encoding "
                       "and calibration are version {base}'s, so its per-site metrics hold unchanged.",
        "before": "- before: {policy}",
        "after": "- after: {policy}",
        "untranslated": "{text}",
    },
    "zh-CN": {
        "title": "# 模型说明：{name} 第 {version} 版",
        "intended_use": "## 适用范围",
        "predicts": "根据 {n} 项首诊特征预测 **{label}**（{kind}：{classes}）。特征：{features}。",
        "training": "## 训练",
        "federated": "在 {sites} 个站点间联邦训练，共 {rounds} 轮{encrypted} FedAvg；模型族 {family}。"
                     "任何站点的数据行和单个站点的模型更新都没有以明文离开该站点。",
        "encrypted": " CKKS 加密的",
        "performance": "## 各站点表现（留出数据）",
        "columns": "站点|训练行数|测试行数|全局模型|个性化模型|仅本地训练|汇集数据|{secondary}（全局模型）|ECE 全局模型|"
                   "ECE 个性化模型|站点的选择",
        "metric_binary": "指标：AUROC；ECE：期望校准误差，10 个分箱。",
        "metric_multi": "指标：宏平均一对其余 AUROC；ECE：期望校准误差，10 个分箱。",
        "calibration": "## 校准",
        "platt": "联邦拟合的 Platt 缩放：斜率 {slope}，截距 {intercept}。",
        "temperature": "联邦拟合的温度缩放：T = {temperature}。",
        "none": "无。",
        "policy": "## 分级策略（治理设置）",
        "policy_text": "分诊等级 ≤ {t_level} 级或风险 ≥ {t_risk}：转三级医院；分诊等级 ≤ {c_level} 级或风险 ≥ {c_risk}："
                       "转县/区级医院；其余在社区诊治。风险 ≥ {critical} 时发出危急警示。",
        "limits": "## 已知局限",
        "change": "## 相对第 {base} 版的变更：分级策略",
        "change_text": "分级策略阈值由 {by} 修改（理由：{reason}）。参数、编码和校准均沿用第 {base} 版，因此其各站点指标不变。",
        "before": "- 修改前：{policy}",
        "after": "- 修改后：{policy}",
        "untranslated": "（暂无中文译文，以下为英文原文）{text}",
    },
}
_KINDS_ZH = {"binary": "二分类", "ordinal": "有序分级", "multiclass": "多分类"}
_CHOICES_ZH = {"global": "全局模型"}  # the other choices are method names (fine-tune (mu=1), site-intercepts, …)

_BASE_USE_ZH = {
    "triage": "社区卫生服务中心首诊时的分诊等级，从 1 级（复苏，最紧急）到 5 级（非紧急），与我国的四级五区或 "
              "Manchester/ESI 等五级分诊量表相当。有序模型：一个紧急程度评分加有序切点，因此“2 级或更紧急”的概率"
              "总不低于“1 级”的概率。",
    "diagnosis": "辅助诊断：社区卫生服务中心首诊病例最可能的诊断分组（ICD-10 章），按可能性排序，用于给出前 k 个建议。"
                 "标签是就诊后记录的出院诊断或最终诊断，从不作为输入。",
    "referral_risk": "社区卫生服务中心就诊患者需要社区以上层级诊治（住院、转院、ICU、手术或死亡）的风险，"
                     "仅依据首诊时社区已有的信息。",
}
_TEXT_USE_ZH = "加入患者自述的主诉原文（自由文本，经哈希处理：见 models/text.py），与主诉类别并用。其余与 `{base}` 任务相同。"
# The Chinese intended use of each shipped task, with the English it translates: a task whose English
# description has changed since gets its English text, marked, rather than a stale translation.
_INTENDED_USE_ZH = {
    "heart_disease": (
        "Angiographic heart disease (any vessel narrowed > 50 %) from the UCI heart disease data of four hospitals "
        "(Cleveland, Hungary, Switzerland, Long Beach VA), with FLamby's choice of features.",
        "冠状动脉造影所见心脏病（任一血管狭窄 > 50 %），数据为 UCI 心脏病数据集中四家医院（Cleveland、Hungary、"
        "Switzerland、Long Beach VA）的数据，特征按 FLamby 的选择。"),
    "triage": (
        "Triage level at a community clinic's first visit, 1 (resuscitation, most urgent) to 5 (non-urgent), as a "
        "five-level scale like China's four-level/five-zone or the Manchester/ESI scales. Ordinal: one urgency score "
        "with ordered cut points, so \"level 2 or more urgent\" is always at least as likely as \"level 1\".",
        _BASE_USE_ZH["triage"]),
    "diagnosis": (
        "Assisted diagnosis: the likely diagnosis group (ICD-10 chapter) of a community clinic's first visit, ranked, "
        "for top-k suggestions. The label is the discharge or final diagnosis, recorded after the visit, and is never "
        "an input.",
        _BASE_USE_ZH["diagnosis"]),
    "referral_risk": (
        "Risk that a patient seen at a community clinic needs care above the community tier (admission, transfer, "
        "ICU, surgery or death), from what the clinic has at the first visit.",
        _BASE_USE_ZH["referral_risk"]),
}
for _base in ("triage", "diagnosis", "referral_risk"):
    _INTENDED_USE_ZH[f"{_base}_text"] = (
        "With the chief complaint as the patient said it (free text, hashed: see models/text.py) next to its "
        f"category. Otherwise the same task as `{_base}`. {_INTENDED_USE_ZH[_base][0]}",
        _TEXT_USE_ZH.format(base=_base) + _BASE_USE_ZH[_base])


def _words(text: str) -> str:
    return " ".join(text.split())


def _lang(lang: str) -> str:
    if lang not in _TEXT:
        raise ValueError(f"no model card in {lang!r}: {', '.join(CARD_LANGS)}")
    return lang


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def policy_text(policy: TierPolicy | Mapping[str, Any], lang: str = "en") -> str:
    """The tier policy's thresholds as one sentence in ``lang``."""
    policy = policy if isinstance(policy, TierPolicy) else TierPolicy.model_validate(policy)
    return _TEXT[_lang(lang)]["policy_text"].format(
        t_level=policy.tertiary.triage_at_most, t_risk=f"{policy.tertiary.risk_at_least:.0%}",
        c_level=policy.county.triage_at_most, c_risk=f"{policy.county.risk_at_least:.0%}",
        critical=f"{policy.critical_risk_at_least:.0%}")


def intended_use(task: str, english: str, lang: str) -> str:
    """The task's intended use in ``lang``: its spec's (English) description, or that description's translation."""
    if lang == "en":
        return english
    source, translated = _INTENDED_USE_ZH.get(task, ("", ""))
    if _words(source) == _words(english):
        return translated
    return _TEXT[lang]["untranslated"].format(text=english)


def card_data(outcome, *, name: str, version: str, sites: dict[str, dict] | None = None,
              policy: TierPolicy | None = None, extra: dict | None = None) -> dict:
    """The card of ``outcome`` registered as ``name`` version ``version``, as JSON (what the markdown renders)."""
    spec = outcome.task
    sites = sites or {s: {"global": m, "test_rows": int(m.get("n", 0))} for s, m in outcome.sites.items()}
    return {
        "model": {"name": name, "version": version, "task": spec.name, "family": spec.model.family,
                  "label": spec.label.model_dump(mode="json", exclude={"class_display"}),
                  "features": [f.name for f in spec.features]},
        "intended_use": spec.description.strip(),
        "training": {"federated": True, "encrypted": outcome.encrypted, "rounds": len(outcome.rounds),
                     "sites": sorted(outcome.sites), "train_rows": outcome.train_rows,
                     "seconds": round(outcome.seconds, 1), **(extra or {})},
        "per_site": sites,
        "calibration": outcome.calibration.to_dict(),
        "tier_policy": policy.model_dump() if policy else None,
        "known_limits": LIMITS,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def render_model_card(card: Mapping[str, Any], lang: str = "en") -> str:
    """The markdown of ``card`` (``card_data``'s JSON, with a derived version's ``change``) in ``lang``."""
    text, model, training = _TEXT[_lang(lang)], card["model"], card["training"]
    label = model["label"]
    kind = label["kind"]
    secondary = {"ordinal": "kappa", "multiclass": "top3-accuracy"}.get(kind)
    lines = [text["title"].format(name=model["name"], version=model["version"]), "",
             text["intended_use"], intended_use(model["task"], card["intended_use"], lang), "",
             text["predicts"].format(label=label["name"], kind=_KINDS_ZH.get(kind, kind) if lang != "en" else kind,
                                     classes=", ".join(label["classes"]), n=len(model["features"]),
                                     features=", ".join(model["features"])), "",
             text["training"],
             text["federated"].format(sites=len(training["sites"]), rounds=training["rounds"],
                                      encrypted=text["encrypted"] if training["encrypted"] else "",
                                      family=model["family"]), "",
             text["performance"]]
    columns = text["columns"].format(secondary=secondary).split("|")
    if not secondary:
        columns.pop(7)
    lines += ["| " + " | ".join(columns) + " |",
              "|---|---:|---:|---:|---:|---:|---:" + ("|---:" if secondary else "") + "|---:|---:|---|"]
    train_rows = training.get("train_rows", {})
    for site, s in card["per_site"].items():
        g, p = s.get("global", {}), s.get("personalised", {})
        row = [site, train_rows.get(site, "–"), s.get("test_rows", "–"), g.get("auroc", math.nan),
               p.get("auroc", math.nan), s.get("local_only", {}).get("auroc", math.nan),
               s.get("pooled", {}).get("auroc", math.nan)]
        if secondary:
            row.append(g.get(secondary, math.nan))
        choice = s.get("personalisation", "global")
        row += [g.get("ece", math.nan), p.get("ece", math.nan), _CHOICES_ZH.get(choice, choice) if lang != "en" else choice]
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    cal = card["calibration"]
    lines += ["", text["metric_binary" if kind == "binary" else "metric_multi"], "", text["calibration"],
              text[cal.get("kind", "none")].format(slope=f"{cal.get('slope', 1.0):.3f}",
                                                   intercept=f"{cal.get('intercept', 0.0):+.3f}",
                                                   temperature=f"{cal.get('temperature', 1.0):.3f}"), ""]
    if card.get("tier_policy"):
        lines += [text["policy"], policy_text(card["tier_policy"], lang), ""]
    lines += [text["limits"], *(f"- {limit}" for limit in (LIMITS if lang == "en" else _LIMITS_ZH)), ""]
    for change in card.get("changes") or ([card["change"]] if card.get("change") else []):
        lines += [text["change"].format(base=change["derived_from"]),
                  text["change_text"].format(by=change["by"], reason=change["reason"], base=change["derived_from"]),
                  "", text["before"].format(policy=policy_text(change["previous_tier_policy"], lang)),
                  text["after"].format(policy=policy_text(change.get("tier_policy") or card["tier_policy"], lang)), ""]
    return "\n".join(lines)


def build_model_cards(outcome, *, name: str, version: str, sites: dict[str, dict] | None = None,
                      policy: TierPolicy | None = None, extra: dict | None = None) -> tuple[dict[str, str], dict]:
    """``({lang: markdown}, json)`` of the card of ``outcome`` registered as ``name`` version ``version``."""
    card = card_data(outcome, name=name, version=version, sites=sites, policy=policy, extra=extra)
    return {lang: render_model_card(card, lang) for lang in CARD_LANGS}, card


def build_model_card(outcome, *, name: str, version: str, sites: dict[str, dict] | None = None,
                     policy: TierPolicy | None = None, extra: dict | None = None) -> tuple[str, dict]:
    """``(markdown, json)`` of the card of ``outcome`` registered as ``name`` version ``version`` (English)."""
    card = card_data(outcome, name=name, version=version, sites=sites, policy=policy, extra=extra)
    return render_model_card(card, "en"), card
