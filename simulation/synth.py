"""Synthetic community clinics for the embedded demo and the tests.

Each clinic's export holds the 16 first-visit features of ``models/tasks/features/first_visit.yaml``,
the chief complaint as free text (``complaint_text``, read by the ``*_text`` tasks) and three
outcomes, one per built-in clinical task:

- ``triage_level`` (task ``triage``): 1..5 as assigned by the triage nurse, 1 most urgent;
- ``diagnosis_group`` (task ``diagnosis``): ICD-10 chapter of the final diagnosis;
- ``referred_up`` (task ``referral_risk``): 0/1, needed care above the community tier.

The generative story (every assumption is in docs/synthetic-data.md):

1. age, sex and a history of hypertension, diabetes, COPD and heart disease (rising with age);
2. a latent diagnosis group from a multinomial logit on age, sex, history and the clinic's case mix;
3. the chief complaint given the diagnosis (informative, not deterministic);
4. a latent severity = group base + age + comorbidity + clinic shift + noise, which drives correlated
   vital signs together with the diagnosis group;
5. the nurse's triage level = severity + noise cut at five levels (with a clinic's over- or
   under-triage habit), then 12 % of levels moved by one;
6. referral = Bernoulli(sigmoid(a + b·severity + group effect + clinic offset)), 4 % flipped;
7. the chief complaint as the desk wrote it (``complaint_text``, zh and some en, with synonyms and
   typos, some empty) from the diagnosis group, the coded complaint, severity and fever
   (``simulation/complaint_text.py``). Its draws come from a generator of their own, seeded from the
   clinic's name and the federation's seed, so every other column is what it was before the text;
8. the day of the visit (``visit_date``), uniform over the ``SERIES_DAYS`` days from ``SERIES_START``,
   from a generator of its own likewise. ``write_federation`` adds an influenza-like wave
   (``Outbreak``, on by default) at two neighbouring clinics: extra febrile respiratory visits over
   two weeks, drawn from generators of their own, so the other visits are those of a run without it.

The physiology (steps 2-6 apart from the intercepts) is shared by every clinic; clinics differ in
size, age and case mix, prevalence, recording habits and triage habits.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from simulation.complaint_text import complaint_texts
from simulation.outbreak import (
    DEFAULT_OUTBREAK,
    SERIES_DAYS,
    SERIES_START,
    WAVE_PATIENTS,
    Outbreak,
    own_rng,
    visit_days,
)

__all__ = [
    "COMPLAINTS", "DEFAULT_CLINICS", "DEFAULT_OUTBREAK", "DIAGNOSIS_GROUPS", "NEIGHBOURS", "OUTCOMES", "SERIES_DAYS",
    "SERIES_START", "TRIAGE_LEVELS", "ClinicProfile", "Outbreak", "generate_clinic", "outbreak_visits", "text_rng",
    "write_federation",
]

COMPLAINTS = ["chest_pain", "dyspnoea", "fever", "abdominal_pain", "neuro", "trauma", "other"]
DIAGNOSIS_GROUPS = ["A00-B99", "G00-G99", "I00-I99", "J00-J99", "K00-K93", "M00-M99", "N00-N99",
                    "R00-R99", "S00-T98"]
TRIAGE_LEVELS = [1, 2, 3, 4, 5]
OUTCOMES = ["triage_level", "diagnosis_group", "referred_up"]
REQUIRED = ["age", "sex", "complaint"]
OPTIONAL_RECORDED = ["sbp", "dbp", "resp_rate", "temperature", "spo2", "pain_score", "arrival", "avpu"]

# The two neighbouring clinics whose referral prevalence differs most (tests and docs compare them):
# the town's health centre next to the county hospital, and the suburban centre a few streets away.
NEIGHBOURS = ("clinic_05_suburban", "clinic_06_township")

_G = {g: i for i, g in enumerate(DIAGNOSIS_GROUPS)}
_C = {c: i for i, c in enumerate(COMPLAINTS)}


def _by_group(values: dict[str, float], default: float = 0.0) -> np.ndarray:
    return np.array([values.get(g, default) for g in DIAGNOSIS_GROUPS], dtype=float)


# --- 2. diagnosis group: multinomial logit --------------------------------------------------------
# Log-odds per group; "old" is (age - 50) / 15, "child" is age < 15.
DX_BASE = _by_group({"A00-B99": 0.2, "G00-G99": -1.3, "I00-I99": -0.9, "J00-J99": 0.4, "K00-K93": 0.0,
                     "M00-M99": -0.2, "N00-N99": -0.9, "R00-R99": 0.3, "S00-T98": -0.2})
DX_OLD = _by_group({"A00-B99": -0.3, "G00-G99": 0.3, "I00-I99": 0.8, "J00-J99": 0.1, "K00-K93": 0.0,
                    "M00-M99": 0.2, "N00-N99": 0.1, "R00-R99": 0.0, "S00-T98": -0.3})
DX_CHILD = _by_group({"A00-B99": 0.8, "J00-J99": 0.5, "I00-I99": -2.0, "M00-M99": -1.0, "N00-N99": -0.5,
                      "G00-G99": -0.3})
DX_MALE = _by_group({"I00-I99": 0.25, "S00-T98": 0.5, "N00-N99": -0.7, "M00-M99": 0.1})
DX_HTN = _by_group({"I00-I99": 0.6, "G00-G99": 0.3, "N00-N99": 0.2})
DX_DM = _by_group({"I00-I99": 0.3, "N00-N99": 0.4, "A00-B99": 0.2})
DX_COPD = _by_group({"J00-J99": 1.6})
DX_HD = _by_group({"I00-I99": 1.2})

# --- 3. chief complaint given the diagnosis (rows: groups; columns: COMPLAINTS) ------------------
PRESENTATION = np.array([
    # chest dysp  fever abdo  neuro trauma other
    [0.01, 0.06, 0.55, 0.18, 0.03, 0.00, 0.17],  # A00-B99 infectious: fever; gastroenteritis; rash
    [0.02, 0.02, 0.04, 0.02, 0.62, 0.06, 0.22],  # G00-G99 nervous: neuro; headache, dizziness as "other"
    [0.45, 0.20, 0.01, 0.04, 0.12, 0.01, 0.17],  # I00-I99 circulatory: chest pain, heart failure, stroke
    [0.08, 0.42, 0.35, 0.01, 0.00, 0.00, 0.14],  # J00-J99 respiratory: dyspnoea, fever; cough as "other"
    [0.07, 0.01, 0.07, 0.65, 0.01, 0.01, 0.18],  # K00-K93 digestive: abdominal pain; epigastric as chest
    [0.14, 0.00, 0.00, 0.06, 0.06, 0.30, 0.44],  # M00-M99 musculoskeletal: back pain, strain, chest wall
    [0.00, 0.00, 0.20, 0.52, 0.00, 0.00, 0.28],  # N00-N99 genitourinary: abdominal/flank pain, fever
    [0.14, 0.08, 0.10, 0.14, 0.12, 0.02, 0.40],  # R00-R99 symptoms and signs: anything, "other" most
    [0.02, 0.02, 0.00, 0.05, 0.08, 0.72, 0.11],  # S00-T98 injury and poisoning: trauma; poisoning
])
PRESENTATION = PRESENTATION / PRESENTATION.sum(axis=1, keepdims=True)
# Some presentations are atypical or coded vaguely at a busy desk: they follow the nonspecific mix
# (an injury is rarely mistaken: the wound is visible).
ATYPICAL = _by_group({"S00-T98": 0.10}, default=0.25)[:, None]
PRESENTATION = (1 - ATYPICAL) * PRESENTATION + ATYPICAL * PRESENTATION[DIAGNOSIS_GROUPS.index("R00-R99")]

# --- 4. severity and vital signs -----------------------------------------------------------------
SEVERITY_BASE = _by_group({"A00-B99": 0.1, "G00-G99": 0.7, "I00-I99": 0.9, "J00-J99": 0.6, "K00-K93": 0.2,
                           "M00-M99": -0.6, "N00-N99": 0.0, "R00-R99": -0.5, "S00-T98": 0.2})
FEVER_RATE = _by_group({"A00-B99": 0.75, "J00-J99": 0.50, "N00-N99": 0.35, "G00-G99": 0.08}, default=0.05)
PAIN_BASE = _by_group({"S00-T98": 3.8, "K00-K93": 3.6, "M00-M99": 3.4, "N00-N99": 3.0, "I00-I99": 2.0},
                      default=1.8)

# --- 5. triage: cut points on the nurse's acuity (most urgent first) -----------------------------
TRIAGE_CUTS = np.array([2.3, 1.16, -0.16, -1.23])  # acuity > cut[k] -> level k + 1
TRIAGE_NOISE_SD = 0.35
TRIAGE_MOVED = 0.12

# --- 6. referral ---------------------------------------------------------------------------------
REFERRAL_INTERCEPT = -2.3
REFERRAL_SLOPE = 1.9
REFERRAL_GROUP = _by_group({"I00-I99": 0.5, "S00-T98": 0.4, "G00-G99": 0.4, "K00-K93": 0.3, "M00-M99": -0.4,
                            "R00-R99": -0.3, "A00-B99": -0.3})
REFERRAL_FLIPPED = 0.04


@dataclass
class ClinicProfile:
    """One clinic: its size, population, case mix and habits (the physiology is shared)."""

    name: str
    size: int
    age_mean: float = 50.0
    age_sd: float = 18.0
    # Multipliers on the odds of each diagnosis group (ICD-10 chapter code -> factor; absent = 1).
    case_mix: dict[str, float] = field(default_factory=dict)
    # Optional coding habit: relative weights of the chief complaints (COMPLAINTS order), applied on
    # top of the presentation given the diagnosis. None: no habit.
    complaint_mix: list[float] | None = None
    severity_shift: float = 0.0  # sicker (>0) or healthier (<0) attenders
    label_offset: float = 0.0  # referral intercept: > 0 refers more liberally
    triage_shift: float = 0.0  # > 0 over-triages (more urgent levels), < 0 under-triages
    missing_rate: float = 0.05  # optional vitals; resp_rate and pain_score are missed 1.5 times as often
    never_records: list[str] = field(default_factory=list)
    export: str = "utf-8"  # or "gbk-semicolon"
    text_empty_rate: float = 0.06  # complaint texts left empty at the desk
    text_english_rate: float = 0.05  # complaint texts written in English
    district: str = "district_1"  # the health district the clinic reports to (syndromic surveillance)
    fever_rate: float | None = None  # fever regardless of the diagnosis (an outbreak's visits); None: by group


# Two health districts of four clinics each: the city's, and the suburbs and villages to its south
# (a district's series is a sum the key holder decrypts over at least min-sites clinics).
INNER, OUTER = "inner_city", "outer_suburbs"
DEFAULT_CLINICS = [
    # A large city community health centre: working-age adults, many vague "symptoms" visits.
    ClinicProfile("clinic_01_urban", 1100, age_mean=46, case_mix={"R00-R99": 1.3}, missing_rate=0.06,
                  text_english_rate=0.12, district=INNER),
    # A centre for an ageing neighbourhood: heart and lung disease; refers only when it must.
    ClinicProfile("clinic_02_elderly", 800, age_mean=72, age_sd=10,
                  case_mix={"I00-I99": 1.5, "J00-J99": 1.3, "S00-T98": 0.6}, label_offset=-0.7, missing_rate=0.08,
                  district=INNER),
    # Next to an industrial park: young workers, injuries and strains.
    ClinicProfile("clinic_03_industrial", 650, age_mean=40, age_sd=12, case_mix={"S00-T98": 3.0, "M00-M99": 1.8},
                  missing_rate=0.06, district=INNER),
    # Far from the county town, no pulse oximeter; infections and farm injuries; under-triages a little.
    ClinicProfile("clinic_04_rural_no_oximeter", 500, age_mean=55, case_mix={"A00-B99": 1.4, "S00-T98": 1.3},
                  never_records=["spo2"], label_offset=0.3, triage_shift=-0.15, missing_rate=0.10, district=OUTER),
    # Suburban centre a few streets from clinic_06; exports GBK text with ';' and decimal commas.
    ClinicProfile("clinic_05_suburban", 420, age_mean=49, label_offset=0.5, missing_rate=0.07,
                  export="gbk-semicolon", district=OUTER),
    # The town's health centre at the county hospital's gate: the sicker walk-ins, refers liberally,
    # over-triages.
    ClinicProfile("clinic_06_township", 330, age_mean=58, case_mix={"I00-I99": 1.3, "G00-G99": 1.3},
                  severity_shift=0.45, label_offset=1.45, triage_shift=0.25, missing_rate=0.10, district=OUTER),
    # A mixed practice with many children: infections and respiratory illness, mostly mild.
    ClinicProfile("clinic_07_paediatric_mix", 260, age_mean=28, age_sd=22,
                  case_mix={"A00-B99": 1.8, "J00-J99": 1.5}, severity_shift=-0.3, missing_rate=0.06,
                  district=INNER),
    # A village clinic: older patients, one doctor who under-triages and refers sparingly.
    ClinicProfile("clinic_08_small_village", 150, age_mean=62, case_mix={"A00-B99": 1.2, "M00-M99": 1.3},
                  label_offset=-0.5, triage_shift=-0.3, missing_rate=0.09, text_empty_rate=0.15,
                  district=OUTER),
]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _draw_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of ``probs`` (rows sum to 1)."""
    cum = np.cumsum(probs, axis=1)
    cum[:, -1] = 1.0
    return (rng.random((len(probs), 1)) > cum).sum(axis=1)


def _whole(values: np.ndarray, lo: float, hi: float) -> pd.Series:
    """Clip and round to whole numbers, as recorded; nullable so gaps stay integers."""
    return pd.Series(np.clip(values, lo, hi).round().astype(int), dtype="Int64")


def _with_decimal_commas(frame: pd.DataFrame) -> pd.DataFrame:
    """Write every non-whole number with a decimal comma (pandas' ``decimal=`` skips object columns)."""
    def fmt(v: object) -> str | None:
        if v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and not np.isfinite(v)):
            return None
        if isinstance(v, (float, np.floating)):
            return str(int(v)) if v == int(v) else repr(float(v)).replace(".", ",")
        return str(v)
    return frame.astype(object).map(fmt)


def text_rng(profile: ClinicProfile, seed: int = 0) -> np.random.Generator:
    """The generator of a clinic's complaint texts: apart from ``rng``, so the texts leave the
    draws of every other column as they were."""
    return np.random.default_rng([seed, zlib.crc32(profile.name.encode("utf-8"))])


def outbreak_visits(profile: ClinicProfile, outbreak: Outbreak, *, seed: int = 0,
                    start: date = SERIES_START) -> pd.DataFrame:
    """The wave's extra visits at one clinic (ids ``<clinic>-ili-0000`` on), or none if it is not one of
    the wave's clinics."""
    if profile.name not in outbreak.clinics or outbreak.visits < 1:
        return pd.DataFrame()
    wave = replace(profile, name=f"{profile.name}-ili", size=outbreak.visits, **WAVE_PATIENTS)
    frame = generate_clinic(wave, own_rng(profile.name, seed, 2), text_seed=seed)
    frame["encounter_id"] = [f"{profile.name}-ili-{i:04d}" for i in range(len(frame))]
    frame["visit_date"] = visit_days(own_rng(profile.name, seed, 3), len(frame),
                                     start + timedelta(days=outbreak.start_day), outbreak.curve())
    return frame


def generate_clinic(profile: ClinicProfile, rng: np.random.Generator, *, latent: bool = False,
                    text_seed: int = 0, start: date = SERIES_START, days: int = SERIES_DAYS) -> pd.DataFrame:
    """One clinic's first-visit encounters with the triage, diagnosis and referral outcomes.

    With ``latent`` the frame also holds the latent ``severity`` and ``acuity`` (never exported).
    The complaint texts come from ``text_rng(profile, text_seed)``, never from ``rng``; the visit days
    (``visit_date``, ISO text, uniform over ``days`` days from ``start``) from a generator of their own.
    """
    n = profile.size
    # 1. demographics and history
    age = np.clip(rng.normal(profile.age_mean, profile.age_sd, n), 1, 99).round()
    male = rng.random(n) < 0.5
    old = (age - 50) / 15
    child = age < 15
    hx_htn = rng.random(n) < _sigmoid(-0.8 + 0.9 * old)
    hx_dm = rng.random(n) < _sigmoid(-1.8 + 0.6 * old)
    hx_copd = rng.random(n) < _sigmoid(-2.8 + 0.7 * old)
    hx_hd = rng.random(n) < _sigmoid(-2.4 + 0.9 * old)

    # 2. diagnosis group
    mix = np.log(_by_group(profile.case_mix, default=1.0))
    logits = (DX_BASE + mix + np.outer(old, DX_OLD) + np.outer(child, DX_CHILD) + np.outer(male, DX_MALE)
              + np.outer(hx_htn, DX_HTN) + np.outer(hx_dm, DX_DM) + np.outer(hx_copd, DX_COPD)
              + np.outer(hx_hd, DX_HD))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    dx = _draw_rows(rng, probs / probs.sum(axis=1, keepdims=True))

    # 3. chief complaint given the diagnosis (and the clinic's coding habit, if any)
    presentation = PRESENTATION[dx]
    if profile.complaint_mix is not None:
        presentation = presentation * np.asarray(profile.complaint_mix, dtype=float)
    complaint = _draw_rows(rng, presentation / presentation.sum(axis=1, keepdims=True))

    # 4. severity, then vital signs
    is_ = {g: dx == i for g, i in _G.items()}
    stroke = is_["I00-I99"] & (complaint == _C["neuro"])
    heart_failure = is_["I00-I99"] & (complaint == _C["dyspnoea"])
    severity = (
        -0.55 + SEVERITY_BASE[dx] + 0.3 * old + 0.35 * hx_copd + 0.4 * hx_hd + 0.15 * hx_dm
        + 0.5 * stroke + 0.3 * heart_failure + profile.severity_shift + rng.normal(0, 0.75, n)
    )
    sp = _softplus(severity + 0.3)  # vitals move mostly once severity is high
    fever = rng.random(n) < (FEVER_RATE[dx] if profile.fever_rate is None else profile.fever_rate)
    heart_rate = 72 + 17 * sp + 9 * fever + 18 * child + rng.normal(0, 8, n)
    resp_rate = 15 + 4.2 * sp + 2.0 * is_["J00-J99"] + 1.0 * fever + 5 * child + rng.normal(0, 1.6, n)
    spo2 = (98.3 - 1.3 * sp - is_["J00-J99"] * (1.0 + 1.8 * sp) - 0.8 * is_["I00-I99"] * sp
            - 2.5 * hx_copd + rng.normal(0, 1.0, n))
    temperature = 36.6 + fever * (0.9 + 0.4 * sp + np.abs(rng.normal(0, 0.4, n))) + rng.normal(0, 0.3, n)
    shock = np.maximum(severity - 2.2, 0)
    sbp = (122 + 0.5 * (age - 50) - 18 * child + 14 * hx_htn - 14 * shock + 15 * stroke
           + rng.normal(0, 14, n))
    dbp = 0.55 * sbp + 8 + rng.normal(0, 7, n)
    chest_pain_cardiac = is_["I00-I99"] & (complaint == _C["chest_pain"])
    pain = PAIN_BASE[dx] + 2.5 * chest_pain_cardiac + 0.8 * sp + rng.normal(0, 1.6, n)
    reduced = severity > np.where(is_["G00-G99"] | stroke, 2.2, 2.7)
    avpu = np.where(reduced, rng.choice(["V", "P", "U"], n, p=[0.6, 0.3, 0.1]), "A")
    p_ambulance = _sigmoid(-3.4 + 1.1 * severity + 0.8 * is_["S00-T98"])
    arrival = np.where(rng.random(n) < p_ambulance, "ambulance",
                       np.where(rng.random(n) < 0.08, "referral", "walk_in"))

    # 5. triage: the nurse's acuity, the clinic's habit, then one-level slips
    acuity = severity + profile.triage_shift + rng.normal(0, TRIAGE_NOISE_SD, n)
    level = 1 + (acuity[:, None] <= TRIAGE_CUTS[None, :]).sum(axis=1)
    moved = rng.random(n) < TRIAGE_MOVED
    step = np.where(level == 1, 1, np.where(level == 5, -1, rng.choice([-1, 1], n)))
    level = np.where(moved, level + step, level)

    # 6. referral above the community tier
    p_up = _sigmoid(REFERRAL_INTERCEPT + REFERRAL_SLOPE * severity + REFERRAL_GROUP[dx] + profile.label_offset)
    referred = rng.random(n) < p_up
    referred = np.where(rng.random(n) < REFERRAL_FLIPPED, ~referred, referred)

    frame = pd.DataFrame({
        "encounter_id": [f"{profile.name}-{i:05d}" for i in range(n)],
        "age": age.astype(int), "sex": np.where(male, "M", "F"),
        "sbp": _whole(sbp, 60, 240), "dbp": _whole(dbp, 30, 140),
        "heart_rate": _whole(heart_rate, 35, 220), "resp_rate": _whole(resp_rate, 8, 60),
        "temperature": np.clip(temperature, 34.5, 42.0).round(1), "spo2": _whole(spo2, 60, 100),
        "avpu": avpu, "pain_score": _whole(pain, 0, 10),
        "complaint": np.asarray(COMPLAINTS)[complaint], "arrival": arrival,
        "hx_hypertension": hx_htn, "hx_diabetes": hx_dm, "hx_copd": hx_copd, "hx_heart_disease": hx_hd,
        "triage_level": level.astype(int), "diagnosis_group": np.asarray(DIAGNOSIS_GROUPS)[dx],
        "referred_up": referred.astype(int),
    })
    # 7. the complaint as written: last, from its own generator (see text_rng)
    frame.insert(frame.columns.get_loc("complaint") + 1, "complaint_text", complaint_texts(
        text_rng(profile, text_seed), groups=np.asarray(DIAGNOSIS_GROUPS)[dx],
        complaints=np.asarray(COMPLAINTS)[complaint], severity=severity, fever=fever, child=child,
        empty_rate=profile.text_empty_rate, english_rate=profile.text_english_rate))
    # 8. the day of the visit: its own generator too
    frame.insert(1, "visit_date", visit_days(own_rng(profile.name, text_seed, 1), n, start, np.ones(days)))
    for col in OPTIONAL_RECORDED:
        rate = profile.missing_rate * (1.5 if col in ("resp_rate", "pain_score") else 1)
        gaps = rng.random(n) < rate
        frame[col] = frame[col].mask(gaps)
    if latent:
        frame["severity"], frame["acuity"] = severity, acuity
    return frame.drop(columns=profile.never_records)


def write_federation(
    out_dir: Path, *, clinics: list[ClinicProfile] | None = None, seed: int = 0, bad_rows: bool = True,
    outbreak: Outbreak | None = DEFAULT_OUTBREAK,
) -> list[tuple[str, Path, Path | None]]:
    """Write one export per clinic (and a mapping where its format needs one).

    Returns ``(clinic name, export path, mapping path or None)`` per clinic. With ``bad_rows``
    a few typing errors of the kind real exports have are mixed in, to be quarantined at ingest.
    ``outbreak`` (on by default; ``None`` for none) adds its wave's visits at its clinics.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for profile in clinics or DEFAULT_CLINICS:
        frame = generate_clinic(profile, rng, text_seed=seed)
        if outbreak is not None and profile.name in outbreak.clinics:
            frame = pd.concat([frame, outbreak_visits(profile, outbreak, seed=seed)], ignore_index=True)
        if bad_rows and len(frame) > 20:
            frame = frame.astype(object)
            frame.loc[3, "heart_rate"] = 900  # a typo: 90 with an extra zero
            frame.loc[7, "sex"] = "unknown"
            frame.loc[11, "age"] = None
            frame = pd.concat([frame, frame.iloc[[5]]], ignore_index=True)  # exported twice
        mapping = None
        if profile.export == "gbk-semicolon":
            path = out_dir / f"{profile.name}.csv"
            text = _with_decimal_commas(frame).rename(
                columns={"complaint": "主诉", "complaint_text": "主诉描述", "age": "年龄"}).to_csv(
                index=False, sep=";")
            path.write_bytes(text.encode("gbk"))
            mapping = out_dir / f"{profile.name}.mapping.yaml"
            mapping.write_text(yaml.safe_dump({
                "format": {"separator": ";", "decimal": ",", "encoding": "gbk"},
                "rename": {"主诉": "complaint", "主诉描述": "complaint_text", "年龄": "age"},
                "values": {"hx_hypertension": {"True": "1", "False": "0"}},
            }, allow_unicode=True), encoding="utf-8")
        else:
            path = out_dir / f"{profile.name}.csv"
            frame.to_csv(path, index=False)
        written.append((profile.name, path, mapping))
    return written
