"""The synthetic visits' days and the influenza-like wave: on by default at the two neighbouring clinics
of one district, deterministic by seed, febrile respiratory, and leaving every other visit as it was."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd

from models.syndromes import match_syndromes
from simulation.outbreak import DEFAULT_OUTBREAK, SERIES_DAYS, SERIES_START, Outbreak
from simulation.synth import DEFAULT_CLINICS, NEIGHBOURS, write_federation

WAVE = [p for p in DEFAULT_CLINICS if p.name in NEIGHBOURS]


def _read(path, mapping) -> pd.DataFrame:
    if mapping is None:
        return pd.read_csv(path, dtype=str)
    return pd.read_csv(path, sep=";", encoding="gbk", dtype=str).rename(
        columns={"主诉": "complaint", "主诉描述": "complaint_text", "年龄": "age"})


def test_the_wave_is_on_by_default_at_two_neighbours_of_one_district(tmp_path):
    assert DEFAULT_OUTBREAK.clinics == NEIGHBOURS
    assert len({p.district for p in WAVE}) == 1
    with_wave = {name: _read(p, m) for name, p, m in write_federation(tmp_path / "a", clinics=WAVE, seed=2)}
    without = {name: _read(p, m) for name, p, m in write_federation(tmp_path / "b", clinics=WAVE, seed=2,
                                                                    outbreak=None)}
    first = SERIES_START + timedelta(days=DEFAULT_OUTBREAK.start_day)
    last = first + timedelta(days=DEFAULT_OUTBREAK.days - 1)
    for name in NEIGHBOURS:
        extra = with_wave[name][with_wave[name]["encounter_id"].str.contains("-ili-")]
        assert len(extra) == DEFAULT_OUTBREAK.visits
        days = pd.to_datetime(extra["visit_date"]).dt.date
        assert days.between(first, last).all() and last <= SERIES_START + timedelta(days=SERIES_DAYS - 1)
        # Every other visit is the one a federation without the wave has.
        rest = with_wave[name][~with_wave[name]["encounter_id"].str.contains("-ili-")].reset_index(drop=True)
        pd.testing.assert_frame_equal(rest, without[name])
        visits = [{k: (float(v.replace(",", ".")) if k == "temperature" and isinstance(v, str) else v)
                   for k, v in row.items()} for row in extra.to_dict("records")]
        febrile = [any(m.syndrome.needs_fever for m in match_syndromes(v)) for v in visits]
        assert np.mean(febrile) > 0.6, name  # fever with cough, sore throat... (some temperatures unrecorded)


def test_the_wave_and_the_days_are_deterministic_by_seed(tmp_path):
    first = write_federation(tmp_path / "a", clinics=WAVE, seed=9)
    again = write_federation(tmp_path / "b", clinics=WAVE, seed=9)
    other = write_federation(tmp_path / "c", clinics=WAVE, seed=10)
    for (_, a, _), (_, b, _), (_, c, _) in zip(first, again, other):
        assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()


def test_the_epidemic_curve_rises_then_fades_and_every_day_is_in_the_series(tmp_path):
    curve = Outbreak(days=14).curve()
    assert abs(curve.sum() - 1.0) < 1e-12
    peak = int(np.argmax(curve))
    assert 3 <= peak <= 6 and (np.diff(curve[: peak + 1]) > 0).all() and (np.diff(curve[peak:]) < 0).all()
    ((_, path, mapping),) = write_federation(tmp_path, clinics=WAVE[:1], seed=1)
    days = pd.to_datetime(_read(path, mapping)["visit_date"]).dt.date
    assert days.min() >= SERIES_START and days.max() < SERIES_START + timedelta(days=SERIES_DAYS)
    assert SERIES_START.isoweekday() == 1  # the series starts on a Monday: its weeks are ISO weeks
