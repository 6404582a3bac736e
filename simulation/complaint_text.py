"""Chief-complaint texts for the synthetic clinics, written from each patient's latent condition.

The desk writes what the patient says, in Chinese (some clinics also in English): a main symptom
that depends on the true diagnosis group as well as on the coded complaint category (so a
respiratory patient coded "other" still says 咳嗽), often a second symptom of the same group, a
duration and words of severity that follow the latent severity (hours and 大汗 when severe, days
and 偶有 when mild), fever when there is fever. Then the desk's habits: synonyms, homophone typos
(咳簌 for 咳嗽), full-width digits, dropped characters, swapped letters, and empty texts.

Every draw comes from the generator passed in, which ``synth`` seeds apart from the one of the
other columns: adding the texts changed none of the other columns.
"""

from __future__ import annotations

import numpy as np

__all__ = ["complaint_texts"]

# (diagnosis group or "*", coded complaint) -> (zh phrases, en phrases); "*" is any group.
MAIN: dict[tuple[str, str], tuple[list[str], list[str]]] = {
    ("I00-I99", "chest_pain"): (["胸痛", "胸口痛", "心前区疼痛", "胸闷痛", "胸口压榨样痛", "胸闷"],
                                ["chest pain", "chest tightness", "crushing chest pain", "pressure in chest"]),
    ("K00-K93", "chest_pain"): (["上腹痛", "胃痛", "烧心", "胸骨后烧灼感"], ["epigastric pain", "heartburn"]),
    ("M00-M99", "chest_pain"): (["胸壁痛", "深呼吸时胸痛", "胸部扭伤后痛"], ["chest wall pain", "pain when breathing in"]),
    ("*", "chest_pain"): (["胸痛", "胸部不适", "胸口不舒服"], ["chest pain", "chest discomfort"]),
    ("J00-J99", "dyspnoea"): (["气促", "喘息", "呼吸困难", "气喘", "咳喘"], ["short of breath", "wheezing"]),
    ("I00-I99", "dyspnoea"): (["活动后气促", "夜间不能平卧", "气短伴双下肢浮肿"],
                              ["breathless on exertion", "cannot lie flat", "swollen legs and breathless"]),
    ("*", "dyspnoea"): (["气短", "呼吸困难", "喘不上气"], ["short of breath", "breathless"]),
    ("A00-B99", "fever"): (["发热", "发烧", "高热寒战", "发热伴腹泻", "发热伴皮疹"], ["fever", "fever and chills"]),
    ("J00-J99", "fever"): (["发热咳嗽", "发烧伴咽痛", "发热咳痰"], ["fever and cough", "fever sore throat"]),
    ("N00-N99", "fever"): (["发热伴尿痛", "发烧 腰痛"], ["fever and pain passing urine"]),
    ("*", "fever"): (["发热", "发烧"], ["fever", "high temperature"]),
    ("K00-K93", "abdominal_pain"): (["腹痛", "肚子痛", "右下腹痛", "上腹痛伴呕吐", "腹胀"],
                                    ["abdominal pain", "tummy ache", "right lower belly pain"]),
    ("N00-N99", "abdominal_pain"): (["腰腹痛", "尿频尿急尿痛", "小便疼", "腰痛伴血尿"],
                                    ["flank pain", "burning when passing urine"]),
    ("A00-B99", "abdominal_pain"): (["腹泻", "拉肚子", "呕吐腹泻"], ["diarrhoea", "vomiting and diarrhoea"]),
    ("*", "abdominal_pain"): (["腹痛", "肚子不舒服"], ["abdominal pain", "stomach ache"]),
    ("G00-G99", "neuro"): (["头痛", "头晕", "抽搐", "肢体麻木", "眩晕"], ["headache", "dizziness", "seizure", "numbness"]),
    ("I00-I99", "neuro"): (["口角歪斜", "一侧肢体无力", "言语不清", "半身不遂"],
                           ["face drooping", "weakness of one side", "slurred speech"]),
    ("*", "neuro"): (["头晕", "头痛"], ["dizzy", "headache"]),
    ("S00-T98", "trauma"): (["摔伤", "割伤", "扭伤", "车祸伤", "烫伤", "被狗咬伤", "误服药物"],
                            ["fall", "cut hand", "sprained ankle", "road traffic accident", "burn", "dog bite"]),
    ("M00-M99", "trauma"): (["腰扭伤", "搬重物后腰痛"], ["back strain lifting"]),
    ("*", "trauma"): (["外伤", "碰伤"], ["injury", "bumped"]),
}
# What a patient of each group says besides (or instead of) the coded complaint.
THEME: dict[str, tuple[list[str], list[str]]] = {
    "A00-B99": (["皮疹", "咽痛", "腹泻", "乏力"], ["rash", "sore throat", "diarrhoea"]),
    "G00-G99": (["头晕", "失眠", "头痛", "手脚麻"], ["dizzy", "headache", "cannot sleep"]),
    "I00-I99": (["心慌", "心悸", "血压高", "胸闷"], ["palpitations", "high blood pressure"]),
    "J00-J99": (["咳嗽", "咳痰", "流涕", "咽痛"], ["cough", "phlegm", "runny nose"]),
    "K00-K93": (["恶心", "反酸", "便秘", "呕吐"], ["nausea", "acid reflux", "vomiting"]),
    "M00-M99": (["腰痛", "关节痛", "颈肩痛", "膝盖痛"], ["back pain", "joint pain", "knee pain"]),
    "N00-N99": (["尿频", "血尿", "腰酸"], ["passing urine often", "blood in urine"]),
    "R00-R99": (["乏力", "不舒服", "食欲差", "头晕乏力"], ["tired", "unwell", "no appetite"]),
    "S00-T98": (["皮肤擦伤", "伤口出血", "肿痛"], ["graze", "bleeding wound", "swelling"]),
}
SEVERE = (["加重", "剧烈", "持续不缓解", "伴大汗", "伴晕厥", "意识模糊", "呼吸费力", "不能行走"],
          ["getting worse", "severe", "sweating", "fainted", "confused", "struggling to breathe"])
MILD = (["轻微", "偶有", "反复", "间断"], ["mild", "on and off", "comes and goes"])
FEVER = (["伴发热", "发烧", "体温高"], ["with fever", "feverish"])
# Homophones and near-misses a busy desk types (or an input method offers first).
ZH_TYPOS = {"咳嗽": "咳簌", "腹泻": "腹写", "呕吐": "呕土", "头晕": "头运", "胸闷": "胸门", "气促": "气粗",
            "心慌": "心荒", "皮疹": "皮诊", "眩晕": "玄晕", "抽搐": "抽畜", "疼": "痛"}
_FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _duration(rng: np.random.Generator, severity: float, en: bool, acute: bool) -> str:
    if (acute or severity > 0.8) and rng.random() < 0.7:
        hours = int(rng.integers(1, 12))
        return f"for {hours} hours" if en else _pick(rng, [f"{hours}小时", "半小时", "今晨起", f"{hours}h"])
    days = int(rng.integers(1, 4 if acute else 15))
    if en:
        return f"for {days} days"
    unit = rng.random()
    if acute or unit < 0.75:
        return _pick(rng, [f"{days}天", f"{days}日"])
    return _pick(rng, ["1周", "2周", "半月", "1月"]) if unit < 0.95 else f"{1 + days % 5}年"


def _typos(rng: np.random.Generator, text: str, en: bool) -> str:
    if en:
        words = text.split(" ")
        if rng.random() < 0.15:
            i = int(rng.integers(len(words)))
            w = words[i]
            if len(w) > 3:
                j = int(rng.integers(len(w) - 1))
                words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :] if rng.random() < 0.5 else w[:j] + w[j + 1 :]
        return " ".join(words)
    for right, wrong in ZH_TYPOS.items():
        if right in text and rng.random() < 0.12:
            text = text.replace(right, wrong, 1)
    if rng.random() < 0.2:
        text = text.translate(_FULL_WIDTH)
    if len(text) > 4 and rng.random() < 0.04:
        i = int(rng.integers(len(text)))
        text = text[:i] + text[i + 1 :]
    return text


def _one(rng: np.random.Generator, group: str, complaint: str, severity: float, fever: bool, child: bool,
         en: bool) -> str:
    lang = 1 if en else 0
    if complaint == "other" or rng.random() < 0.15:
        main = _pick(rng, THEME[group][lang])
    else:
        main = _pick(rng, MAIN.get((group, complaint), MAIN[("*", complaint)])[lang])
    parts = [main, _duration(rng, severity, en, acute=complaint == "trauma" or group == "S00-T98")]
    if rng.random() < 0.35:
        extra = _pick(rng, THEME[group][lang])
        if extra not in main:
            parts.append(extra)
    if rng.random() < min(0.9, max(0.0, 0.4 * (severity - 0.5))):
        parts.append(_pick(rng, SEVERE[lang]))
    elif severity < -0.4 and complaint != "trauma" and rng.random() < 0.5:
        if en:
            parts.append(_pick(rng, MILD[lang]))
        else:
            parts[0] = _pick(rng, MILD[lang]) + parts[0]
    if fever and complaint != "fever" and rng.random() < 0.6:
        parts.append(_pick(rng, FEVER[lang]))
    if child and not en and rng.random() < 0.3:
        parts[0] = "患儿" + parts[0]
    if en:
        text = ", ".join(parts) if rng.random() < 0.5 else " ".join(parts)
    else:
        text = parts[0] + parts[1] + "".join(_pick(rng, ["，", ",", " ", "、", ""]) + p for p in parts[2:])
    return _typos(rng, text, en)


def complaint_texts(
    rng: np.random.Generator, *, groups: np.ndarray, complaints: np.ndarray, severity: np.ndarray,
    fever: np.ndarray, child: np.ndarray, empty_rate: float, english_rate: float,
) -> list[str | None]:
    """One text per patient (``None`` where the desk wrote nothing); inputs are per-patient arrays
    of diagnosis group codes, complaint categories, latent severity and the fever and child flags."""
    texts: list[str | None] = []
    for g, c, s, f, k in zip(groups, complaints, severity, fever, child):
        if rng.random() < empty_rate:
            texts.append(None)
            continue
        texts.append(_one(rng, str(g), str(c), float(s), bool(f), bool(k), rng.random() < english_rate))
    return texts
