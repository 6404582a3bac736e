"""The synthetic clinics: three outcomes, realistic site differences, deterministic, ingestible."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from models.spec import load_task
from node_agent.ingest import ingest_file
from node_agent.mapping import load_mapping
from node_agent.store import SiteStore
from simulation.synth import (
    DEFAULT_CLINICS,
    DIAGNOSIS_GROUPS,
    NEIGHBOURS,
    OPTIONAL_RECORDED,
    REQUIRED,
    TRIAGE_LEVELS,
    ClinicProfile,
    generate_clinic,
    write_federation,
)

TASKS = ["triage", "diagnosis", "referral_risk"]
SMALL = [
    ClinicProfile("s_plain", 120, age_mean=45),
    ClinicProfile("s_elderly", 90, age_mean=72, age_sd=10, severity_shift=0.3, triage_shift=0.2),
    ClinicProfile("s_no_spo2", 80, never_records=["spo2"], label_offset=0.4),
    ClinicProfile("s_gbk", 70, export="gbk-semicolon", case_mix={"S00-T98": 2.0}),
]
BAD_ROWS = 4  # heart rate 900, unknown sex, missing age, one row exported twice


def _pooled(clinics, seed: int = 0, scale: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.concat([generate_clinic(dataclasses.replace(p, size=p.size * scale), rng).assign(clinic=p.name)
                      for p in clinics], ignore_index=True)


def _read_export(path: Path, mapping: Path | None) -> pd.DataFrame:
    """An export as the clinic wrote it, with its mapping's format and renames applied."""
    spec = yaml.safe_load(mapping.read_text(encoding="utf-8")) if mapping else {}
    fmt = spec.get("format", {})
    frame = pd.read_csv(path, sep=fmt.get("separator", ","), encoding=fmt.get("encoding", "utf-8"), dtype=str,
                        keep_default_na=False, na_values=[""])
    return frame.rename(columns=spec.get("rename", {}))


@pytest.fixture(scope="module")
def small_exports(tmp_path_factory):
    return write_federation(tmp_path_factory.mktemp("synth") / "exports", clinics=SMALL, seed=1)


def test_every_export_has_the_three_outcomes_with_allowed_values(small_exports):
    for name, path, mapping in small_exports:
        frame = _read_export(path, mapping)
        assert {"triage_level", "diagnosis_group", "referred_up", "encounter_id"} <= set(frame.columns), name
        assert set(frame.triage_level) <= {str(level) for level in TRIAGE_LEVELS}
        assert set(frame.diagnosis_group) <= set(DIAGNOSIS_GROUPS)
        assert set(frame.referred_up) <= {"0", "1"}
        assert frame[["triage_level", "diagnosis_group", "referred_up"]].notna().all().all()


def test_all_triage_levels_in_a_large_clinic_and_all_diagnosis_groups_overall():
    big = generate_clinic(ClinicProfile("big", 3000), np.random.default_rng(3))
    assert sorted(big.triage_level.unique()) == TRIAGE_LEVELS
    assert sorted(_pooled(DEFAULT_CLINICS).diagnosis_group.unique()) == DIAGNOSIS_GROUPS


def test_overall_triage_mix_is_like_a_real_emergency_desk():
    shares = _pooled(DEFAULT_CLINICS, scale=5).triage_level.value_counts(normalize=True)
    assert 0.015 < shares[1] < 0.05 and 0.08 < shares[2] < 0.18
    assert 0.25 < shares[3] < 0.40 and 0.25 < shares[4] < 0.40 and 0.12 < shares[5] < 0.25


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neighbouring_clinics_refer_very_differently(seed):
    frame = _pooled(DEFAULT_CLINICS, seed=seed)
    low, high = (frame.loc[frame.clinic == name, "referred_up"].mean() for name in NEIGHBOURS)
    assert high - low > 0.2, (low, high)


def test_referral_prevalence_differs_across_sites_within_a_realistic_range():
    rates = _pooled(DEFAULT_CLINICS, scale=10).groupby("clinic").referred_up.mean()
    others = rates.drop(list(NEIGHBOURS))
    assert others.between(0.06, 0.33).all(), rates.to_dict()
    assert others.max() - others.min() > 0.12


def test_triage_is_ordinal_in_severity():
    frame = _pooled(DEFAULT_CLINICS, scale=5)
    by_level = frame.groupby("triage_level").referred_up.mean().reindex(TRIAGE_LEVELS)
    assert (np.diff(by_level.to_numpy()) <= 0).all(), by_level.to_dict()
    assert by_level[1] > 0.5 > 0.1 > by_level[5]


def test_case_mix_shapes_the_diagnoses():
    frame = _pooled(DEFAULT_CLINICS, scale=3)
    share = pd.crosstab(frame.clinic, frame.diagnosis_group, normalize="index")
    assert share.loc["clinic_03_industrial", "S00-T98"] > 2 * share.loc["clinic_02_elderly", "S00-T98"]
    assert share.loc["clinic_02_elderly", "I00-I99"] > 2 * share.loc["clinic_07_paediatric_mix", "I00-I99"]
    assert share.loc["clinic_07_paediatric_mix", "A00-B99"] > share.loc["clinic_01_urban", "A00-B99"]


def test_complaint_is_informative_but_not_deterministic():
    frame = _pooled(DEFAULT_CLINICS)
    given = pd.crosstab(frame.diagnosis_group, frame.complaint, normalize="index")
    assert given.loc["S00-T98", "trauma"] > 0.5 and given.loc["I00-I99", "chest_pain"] > 0.3
    assert given.max(axis=1).max() < 0.9  # no diagnosis always presents the same way
    assert (given > 0.05).sum(axis=1).min() >= 2


def test_recording_habits_never_spo2_and_required_never_missing(tmp_path):
    frame = _pooled(DEFAULT_CLINICS, scale=3)
    assert frame[REQUIRED].notna().all().all()
    gaps = frame[OPTIONAL_RECORDED].isna().groupby(frame.clinic).mean()
    no_oximeter = "clinic_04_rural_no_oximeter"
    assert gaps.loc[no_oximeter, "spo2"] == 1.0  # never recorded: absent from its export
    rates = gaps.drop(columns="spo2").to_numpy().ravel().tolist() + gaps.spo2.drop(no_oximeter).tolist()
    assert 0.03 <= min(rates) and max(rates) <= 0.17, gaps.round(3).to_dict()  # 5-15 % by design

    for name, path, mapping in write_federation(tmp_path, seed=0):
        export = _read_export(path, mapping)
        assert ("spo2" in export.columns) == (name != no_oximeter)
        # only the deliberate bad row misses a required value
        assert export[REQUIRED].isna().sum().to_dict() == {"age": 1, "sex": 0, "complaint": 0}


def test_gbk_export_really_has_decimal_commas(small_exports):
    name, path, mapping = next(e for e in small_exports if e[0] == "s_gbk")
    text = path.read_bytes().decode("gbk")
    assert text.splitlines()[0].count(";") > 10 and "主诉" in text
    temps = _read_export(path, mapping).temperature.dropna()
    assert temps.str.contains(",").any() and not temps.str.contains(r"\.").any()


def test_generation_is_deterministic_for_a_seed(tmp_path):
    pd.testing.assert_frame_equal(_pooled(SMALL, seed=5), _pooled(SMALL, seed=5))
    assert not _pooled(SMALL, seed=5).equals(_pooled(SMALL, seed=6))
    first = write_federation(tmp_path / "a", clinics=SMALL, seed=1)
    second = write_federation(tmp_path / "b", clinics=SMALL, seed=1)
    for (_, a, ma), (_, b, mb) in zip(first, second):
        assert a.read_bytes() == b.read_bytes()
        assert (ma is None and mb is None) or ma.read_bytes() == mb.read_bytes()


def test_every_task_ingests_every_clinic(small_exports, tmp_path):
    """One site store per clinic holds all three tasks, read from the same export."""
    specs = [load_task(task) for task in TASKS]
    for name, path, mapping in small_exports:
        size = next(p.size for p in SMALL if p.name == name)
        with SiteStore(tmp_path / name) as store:
            for spec in specs:
                summary = ingest_file(store, spec, path, load_mapping(mapping))
                assert summary.rows_read == size + 1, (name, spec.name)
                assert summary.accepted == size + 1 - BAD_ROWS > 0, (name, spec.name, summary.reasons)
                assert summary.quarantined == BAD_ROWS, (name, spec.name, summary.reasons)
                reasons = " | ".join(store.quarantine(spec.name).reason)
                for expected in ("heart_rate: 900", "sex: unknown category", "missing required field age",
                                 "duplicate record id"):
                    assert expected in reasons, (name, spec.name, reasons)
                assert ("spo2" in summary.absent_columns) == (name == "s_no_spo2")
                loaded = store.load(spec)
                assert len(loaded) == summary.accepted
                assert set(loaded[spec.label.name].astype(str)) <= set(spec.label.classes)
                if name == "s_gbk":
                    assert loaded.temperature.notna().mean() > 0.8  # decimal commas were read as numbers
