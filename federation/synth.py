"""Synthetic community clinics for the embedded demo and the tests.

Generative assumptions (documented in docs/synthetic-data.md):

- a latent *severity* per encounter rises with age, comorbidities and the complaint
  (chest pain and dyspnoea are the most severe on average), plus a site-specific shift;
- vital signs are driven by severity with correlated noise: heart and respiratory rate up,
  SpO2 down (further down with COPD), temperature up with fever, blood pressure falling only in
  the most severe; lower consciousness (AVPU V/P/U) appears only at high severity;
- "needed care above the community tier" is Bernoulli(sigmoid(a + b * severity)) with a site
  offset, and 4 % of labels are flipped, like real triage records;
- sites differ in size, age mix, complaint mix, prevalence and recording habits; one clinic never
  records SpO2 (no pulse oximeter), and one exports GBK text with ';' and decimal commas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

__all__ = ["ClinicProfile", "DEFAULT_CLINICS", "generate_clinic", "write_federation"]

COMPLAINTS = ["chest_pain", "dyspnoea", "fever", "abdominal_pain", "neuro", "trauma", "other"]
COMPLAINT_SEVERITY = np.array([0.9, 1.0, 0.2, 0.4, 0.7, 0.3, -0.6])


@dataclass
class ClinicProfile:
    name: str
    size: int
    age_mean: float = 50.0
    age_sd: float = 18.0
    complaint_mix: list[float] = field(default_factory=lambda: [1, 1, 2, 1.5, 0.7, 1, 3])
    severity_shift: float = 0.0
    label_offset: float = 0.0
    missing_rate: float = 0.05
    never_records: list[str] = field(default_factory=list)
    export: str = "utf-8"  # or "gbk-semicolon"


DEFAULT_CLINICS = [
    ClinicProfile("clinic_01_urban", 1100, age_mean=46, complaint_mix=[1, 1, 2.5, 1.5, 0.6, 1, 3.5]),
    ClinicProfile("clinic_02_elderly", 800, age_mean=71, age_sd=10, severity_shift=0.3, missing_rate=0.08),
    ClinicProfile("clinic_03_industrial", 650, age_mean=42, complaint_mix=[0.8, 0.8, 1.2, 1, 0.6, 3, 2]),
    ClinicProfile("clinic_04_rural_no_oximeter", 500, age_mean=55, never_records=["spo2"], missing_rate=0.12,
                  label_offset=0.4),
    ClinicProfile("clinic_05_suburban", 420, age_mean=49, export="gbk-semicolon"),
    ClinicProfile("clinic_06_township", 330, age_mean=58, severity_shift=0.2, missing_rate=0.15,
                  label_offset=0.6),
    ClinicProfile("clinic_07_paediatric_mix", 260, age_mean=30, age_sd=22,
                  complaint_mix=[0.3, 1, 3.5, 1.5, 0.5, 1.5, 3], severity_shift=-0.3),
    ClinicProfile("clinic_08_small_village", 150, age_mean=62, missing_rate=0.1, label_offset=-0.3),
]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate_clinic(profile: ClinicProfile, rng: np.random.Generator) -> pd.DataFrame:
    """One clinic's first-visit encounters with the referral outcome."""
    n = profile.size
    age = np.clip(rng.normal(profile.age_mean, profile.age_sd, n), 1, 99).round()
    sex = rng.choice(["F", "M"], n)
    old = (age - 50) / 15
    hx_htn = rng.random(n) < _sigmoid(-0.8 + 0.9 * old)
    hx_dm = rng.random(n) < _sigmoid(-1.8 + 0.6 * old)
    hx_copd = rng.random(n) < _sigmoid(-2.8 + 0.7 * old)
    hx_hd = rng.random(n) < _sigmoid(-2.4 + 0.9 * old)
    mix = np.asarray(profile.complaint_mix, dtype=float)
    complaint_idx = rng.choice(len(COMPLAINTS), n, p=mix / mix.sum())
    severity = (
        -0.6 + 0.35 * old + COMPLAINT_SEVERITY[complaint_idx] + 0.4 * hx_copd + 0.5 * hx_hd + 0.2 * hx_dm
        + profile.severity_shift + rng.normal(0, 0.8, n)
    )
    s_pos = np.log1p(np.exp(severity))  # softplus: vitals move mostly when severity is high
    heart_rate = 74 + 17 * s_pos + rng.normal(0, 7, n)
    resp_rate = 15 + 4.5 * s_pos + rng.normal(0, 1.6, n)
    spo2 = np.clip(98.5 - 3.0 * s_pos - 3.0 * hx_copd + rng.normal(0, 1.1, n), 60, 100)
    fever = (COMPLAINTS.index("fever") == complaint_idx) | (rng.random(n) < 0.08)
    temperature = 36.7 + fever * (0.9 + 0.5 * s_pos) + rng.normal(0, 0.3, n)
    sbp = 122 + 0.5 * (age - 50) + 14 * hx_htn - 9 * np.maximum(severity - 2, 0) + rng.normal(0, 14, n)
    dbp = 0.55 * sbp + 8 + rng.normal(0, 7, n)
    pain = np.clip(np.round(2 + 1.5 * s_pos * (complaint_idx != 2) + rng.normal(0, 1.8, n)), 0, 10)
    avpu = np.where(severity > 3.2, rng.choice(["V", "P", "U"], n, p=[0.6, 0.3, 0.1]), "A")
    arrival = np.where(rng.random(n) < _sigmoid(-3 + 1.1 * severity), "ambulance",
                       np.where(rng.random(n) < 0.1, "referral", "walk_in"))
    p_up = _sigmoid(-2.6 + 1.8 * severity + profile.label_offset)
    label = rng.random(n) < p_up
    flip = rng.random(n) < 0.04
    label = np.where(flip, ~label, label)
    frame = pd.DataFrame({
        "encounter_id": [f"{profile.name}-{i:05d}" for i in range(n)],
        "age": age.astype(int), "sex": sex,
        "sbp": sbp.round(), "dbp": dbp.round(), "heart_rate": heart_rate.round(),
        "resp_rate": resp_rate.round(), "temperature": temperature.round(1), "spo2": spo2.round(),
        "avpu": avpu, "pain_score": pain.astype(int), "complaint": np.asarray(COMPLAINTS)[complaint_idx],
        "arrival": arrival, "hx_hypertension": hx_htn, "hx_diabetes": hx_dm, "hx_copd": hx_copd,
        "hx_heart_disease": hx_hd, "referred_up": label.astype(int),
    })
    for col in ["sbp", "dbp", "resp_rate", "temperature", "spo2", "pain_score", "arrival", "avpu"]:
        gaps = rng.random(n) < profile.missing_rate * (1.5 if col in ("resp_rate", "pain_score") else 1)
        frame[col] = frame[col].astype(object).where(~gaps, None)
    return frame.drop(columns=profile.never_records)


def write_federation(
    out_dir: Path, *, clinics: list[ClinicProfile] | None = None, seed: int = 0, bad_rows: bool = True
) -> list[tuple[str, Path, Path | None]]:
    """Write one export per clinic (and a mapping where its format needs one).

    Returns ``(clinic name, export path, mapping path or None)`` per clinic. With ``bad_rows``
    a few typing errors of the kind real exports have are mixed in, to be quarantined at ingest.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for profile in clinics or DEFAULT_CLINICS:
        frame = generate_clinic(profile, rng)
        if bad_rows and len(frame) > 20:
            frame = frame.astype(object)
            frame.loc[3, "heart_rate"] = 900  # a typo: 90 with an extra zero
            frame.loc[7, "sex"] = "unknown"
            frame.loc[11, "age"] = None
            frame = pd.concat([frame, frame.iloc[[5]]], ignore_index=True)  # exported twice
        mapping = None
        if profile.export == "gbk-semicolon":
            path = out_dir / f"{profile.name}.csv"
            text = frame.rename(columns={"complaint": "主诉", "age": "年龄"}).to_csv(
                index=False, sep=";", decimal=",")
            path.write_bytes(text.encode("gbk"))
            mapping = out_dir / f"{profile.name}.mapping.yaml"
            mapping.write_text(yaml.safe_dump({
                "format": {"separator": ";", "decimal": ",", "encoding": "gbk"},
                "rename": {"主诉": "complaint", "年龄": "age"},
                "values": {"hx_hypertension": {"True": "1", "False": "0"}},
            }, allow_unicode=True), encoding="utf-8")
        else:
            path = out_dir / f"{profile.name}.csv"
            frame.to_csv(path, index=False)
        written.append((profile.name, path, mapping))
    return written
