"""Ranked alerts across series (clinic x syndrome): worst first on a scale-free measure, capped."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coordinator.surveillance import (
    DetectorParameterError,
    ears_c1,
    ears_c2,
    rank_alerts,
)

CALM = [5, 6, 4, 5, 7, 5, 6, 4, 5, 6, 5, 6, 5, 6]  # sd about 0.9 over any 7 days


def _with_tail(*tail: int) -> np.ndarray:
    return np.array(CALM + list(tail))


def test_severity_is_in_standard_deviations_so_a_small_clinic_can_outrank_a_district():
    results = {
        # +100 counts on a district's 500 (sd about 18), +10 on a clinic's 5 (sd about 0.9)
        ("district", "fever"): ears_c1(np.array([500 + 20 * (c - 5) for c in CALM] + [600])),
        ("clinic_a", "fever"): ears_c1(_with_tail(15)),
    }
    digest = rank_alerts(results)
    assert [a.key for a in digest.alerts] == [("clinic_a", "fever"), ("district", "fever")]
    for alert in digest.alerts:
        result = results[alert.key]
        assert alert.severity == pytest.approx(result.statistic[alert.index] - result.threshold)
        assert alert.excess == pytest.approx(alert.observed - alert.upperbound) and alert.excess > 0
    assert digest.alerts[0].severity > digest.alerts[1].severity > 0
    assert digest.alerts[0].excess < digest.alerts[1].excess  # fewer extra cases, more unusual


def test_limit_caps_the_list_and_counts_what_it_hides():
    results = {f"clinic_{i}": ears_c1(_with_tail(10 + i)) for i in range(5)}
    digest = rank_alerts(results, limit=3)
    assert [a.key for a in digest.alerts] == ["clinic_4", "clinic_3", "clinic_2"]
    assert digest.hidden == 2


def test_one_line_per_series_by_default_and_the_window_sets_how_far_back():
    # C2's guard band keeps the wave's first days out of the baseline of the next two
    results = {"wave": ears_c2(_with_tail(30, 25, 20)), "calm": ears_c2(_with_tail(5, 6, 5))}
    today = rank_alerts(results)
    assert [(a.key, a.index) for a in today.alerts] == [("wave", 16)] and today.hidden == 0
    week = rank_alerts(results, window=3)
    assert [(a.key, a.index) for a in week.alerts] == [("wave", 14)] and week.hidden == 2  # its worst day
    all_days = rank_alerts(results, window=3, per_series=3)
    assert [a.index for a in all_days.alerts] == [14, 15, 16] and all_days.hidden == 0


def test_flat_baselines_rank_first_then_by_excess_counts():
    results = {
        "flat_small": ears_c1([0] * 10 + [1]),
        "flat_big": ears_c1([0] * 10 + [4]),
        "noisy": ears_c1(_with_tail(60)),
    }
    digest = rank_alerts(results)
    assert [a.key for a in digest.alerts] == ["flat_big", "flat_small", "noisy"]
    assert digest.alerts[0].severity == math.inf
    floored = rank_alerts({k: ears_c1(v.observed, min_sigma=1.0) for k, v in results.items()})
    assert floored.alerts[0].key == "noisy"  # min_sigma 1: one case after zeros no longer heads the list


def test_no_alarm_gives_an_empty_digest_and_a_long_window_stops_at_the_first_monitored_point():
    digest = rank_alerts({"calm": ears_c1(CALM)}, window=1000)
    assert digest.alerts == () and digest.hidden == 0


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"window": 0}, {"per_series": -1}, {"limit": 2.5}, {"window": True}])
def test_bad_caps_raise_a_usage_error(kwargs):
    with pytest.raises(DetectorParameterError):
        rank_alerts({"calm": ears_c1(CALM)}, **kwargs)
