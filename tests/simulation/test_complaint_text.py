"""The synthetic complaint texts: realistic, informative beyond the coded category, and drawn apart
from every other column (so the default demo's data, and the README's numbers, did not move)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from simulation.complaint_text import ZH_TYPOS
from simulation.synth import (
    DEFAULT_CLINICS,
    ClinicProfile,
    generate_clinic,
    write_federation,
)

# SHA-256 of the default clinics' columns (seed 0) as generated before the texts existed.
COLUMNS_BEFORE_TEXT = "f2bfb7ec1ede61952f32ed1e7ccf631f7faf6bf2e1b2b0799949c07ed32f669c"


@pytest.fixture(scope="module")
def clinics() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.concat([generate_clinic(p, rng, latent=True).assign(clinic=p.name) for p in DEFAULT_CLINICS],
                     ignore_index=True)


def test_other_columns_are_as_before_the_texts():
    rng = np.random.default_rng(0)
    digest = hashlib.sha256()
    for profile in DEFAULT_CLINICS:
        frame = generate_clinic(profile, rng)
        # The visit days come from a generator of their own too (simulation.outbreak): left out likewise.
        digest.update(frame.drop(columns=["complaint_text", "visit_date"]).to_csv(index=False).encode())
    assert digest.hexdigest() == COLUMNS_BEFORE_TEXT


def test_texts_come_from_their_own_generator():
    profile = ClinicProfile("c", 200)
    a = generate_clinic(profile, np.random.default_rng(3), text_seed=0)
    b = generate_clinic(profile, np.random.default_rng(3), text_seed=1)
    # The seed also sets the visit days (their own generator, simulation.outbreak): left out here.
    own = ["complaint_text", "visit_date"]
    pd.testing.assert_frame_equal(a.drop(columns=own), b.drop(columns=own))
    assert (a["complaint_text"].fillna("") != b["complaint_text"].fillna("")).mean() > 0.5
    again = generate_clinic(profile, np.random.default_rng(3), text_seed=0)
    assert a["complaint_text"].equals(again["complaint_text"])


def test_texts_look_like_a_desk_wrote_them(clinics):
    text = clinics["complaint_text"]
    assert 0.03 < text.isna().mean() < 0.12
    written = text.dropna()
    english = written.str.fullmatch(r"[\x00-\x7f]+")
    assert 0.02 < english.mean() < 0.15
    assert written.str.len().between(2, 80).all()
    homophones = [wrong for right, wrong in ZH_TYPOS.items() if len(right) == 2]
    assert written.str.contains("|".join(homophones)).sum() > 20  # homophone typos
    assert written.str.contains("[０-９]").sum() > 50  # full-width digits
    assert written.nunique() > 0.3 * len(written)  # synonyms, durations, extras: not a code list
    village = clinics.loc[clinics.clinic == "clinic_08_small_village", "complaint_text"]
    assert village.isna().mean() > text.isna().mean()


def test_texts_carry_signal_beyond_the_coded_complaint(clinics):
    """Within one coded complaint, the text tells the diagnosis group and the severity apart."""
    other = clinics[(clinics.complaint == "other") & clinics.complaint_text.notna()]
    cough = other.complaint_text.str.contains("咳|cough")
    respiratory = other.diagnosis_group == "J00-J99"
    assert cough[respiratory].mean() > 0.4
    assert cough[~respiratory].mean() < 0.1
    severe_words = clinics.complaint_text.fillna("").str.contains("大汗|晕厥|意识模糊|剧烈|sweating|fainted")
    assert clinics.severity[severe_words].mean() > clinics.severity[~severe_words].mean() + 0.8


def test_the_gbk_export_keeps_the_texts(tmp_path):
    [(_, path, mapping)] = write_federation(tmp_path, clinics=[ClinicProfile("g", 120, export="gbk-semicolon")],
                                               seed=0, bad_rows=False)
    read = pd.read_csv(path, sep=";", encoding="gbk", dtype=str)
    assert "主诉描述" in read.columns and "complaint_text: 主诉描述" not in mapping.read_text(encoding="utf-8")
    assert "主诉描述: complaint_text" in mapping.read_text(encoding="utf-8")
    expected = generate_clinic(ClinicProfile("g", 120, export="gbk-semicolon"), np.random.default_rng(0))
    assert read["主诉描述"].fillna("").tolist() == expected["complaint_text"].fillna("").tolist()
