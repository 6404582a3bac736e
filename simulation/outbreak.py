"""The calendar of the synthetic visits, and the influenza-like wave ``write_federation`` grows.

Every visit gets a day (``visit_date``) uniform over the ``SERIES_DAYS`` days from ``SERIES_START``:
no weekday pattern and no season, so EARS's false alarms on these series come from Poisson-like
noise alone. The wave (``Outbreak``, on by default) adds extra visits at two neighbouring clinics
over two weeks, with the epidemic curve of ``Outbreak.curve``. Its patients (``WAVE_PATIENTS``) have
a respiratory or infectious diagnosis, fever nine times in ten and mostly a fever complaint, so
they say 发热咳嗽 and the like: fever with respiratory symptoms in the syndrome table
(``models.syndromes``). Days and wave come from generators of their own (``own_rng``), so a clinic's
other columns are those of a federation without them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

__all__ = ["DEFAULT_OUTBREAK", "SERIES_DAYS", "SERIES_START", "WAVE_PATIENTS", "Outbreak", "own_rng", "visit_days"]

# 26 ISO weeks from a Monday, through an influenza season.
SERIES_START = date(2025, 9, 1)
SERIES_DAYS = 182
# How a wave's visits differ from the clinic's own (ClinicProfile fields; complaint weights in
# synth.COMPLAINTS order: chest pain, dyspnoea, fever, abdominal pain, neuro, trauma, other).
WAVE_PATIENTS = {"fever_rate": 0.9, "case_mix": {"J00-J99": 40.0, "A00-B99": 4.0},
                 "complaint_mix": [0.3, 0.6, 3.0, 0.3, 0.3, 0.05, 1.5]}


def own_rng(name: str, seed: int, stream: int) -> np.random.Generator:
    """A generator of its own for one part of a clinic (1: its visit days; 2, 3: its wave's visits)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8")), stream])


def visit_days(rng: np.random.Generator, n: int, start: date, weights: np.ndarray) -> list[str]:
    """``n`` days (ISO text) from ``start``, day ``i`` with probability proportional to ``weights[i]``."""
    weights = np.asarray(weights, dtype=float)
    offsets = rng.choice(len(weights), size=n, p=weights / weights.sum())
    return [(start + timedelta(days=int(d))).isoformat() for d in offsets]


@dataclass(frozen=True)
class Outbreak:
    """``visits`` extra visits at each of ``clinics`` over ``days`` days from ``start_day`` (days after
    the series' start). By default the two neighbouring clinics of ``synth.NEIGHBOURS`` (the suburban
    centre and the township's, a few streets apart, in one district), in the series' last two weeks."""

    clinics: tuple[str, ...] = ("clinic_05_suburban", "clinic_06_township")
    start_day: int = SERIES_DAYS - 14
    days: int = 14
    visits: int = 40

    def curve(self) -> np.ndarray:
        """The share of the wave's visits on each of its days: a Beta(2.5, 3.5)-shaped epidemic curve,
        rising to its peak a third of the way in, then fading."""
        x = (np.arange(self.days) + 0.5) / self.days
        weights = x**1.5 * (1 - x) ** 2.5
        return weights / weights.sum()


DEFAULT_OUTBREAK = Outbreak()
