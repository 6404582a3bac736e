"""Alarms across many series (clinic x syndrome), worst first, capped so a commissioner is not drowned.

"Worst" is the statistic's distance over its threshold, in baseline standard deviations, so a
clinic of 5 visits a day and a district of 500 are compared on the same scale. A flat baseline
(``sigma == 0``, only possible with ``min_sigma == 0``) gives an infinite distance; such alarms rank
first, among themselves by how many counts they are over the bound. Run sparse series with
``min_sigma`` 0.5 or 1 to keep a single case after a run of zeros from heading the list.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np

from coordinator.surveillance.ears import EarsResult
from coordinator.surveillance.errors import DetectorParameterError

__all__ = ["Alert", "AlertDigest", "rank_alerts"]


@dataclass(frozen=True)
class Alert:
    """One alarming point of one series."""

    key: Hashable  # what the series is, e.g. ("clinic_a", "fever")
    index: int  # the point's position in its series
    observed: float
    upperbound: float
    statistic: float
    severity: float  # statistic - threshold

    @property
    def excess(self) -> float:
        """Counts over the upper bound."""
        return self.observed - self.upperbound


@dataclass(frozen=True)
class AlertDigest:
    """The alerts shown (worst first) and how many alarms were left out by the caps."""

    alerts: tuple[Alert, ...]
    hidden: int


def rank_alerts(
    results: Mapping[Hashable, EarsResult], *, window: int = 1, limit: int = 10, per_series: int = 1
) -> AlertDigest:
    """Rank the alarms of the last ``window`` points of each series.

    Parameters
    ----------
    results
        One detector result per series, keyed by what the series is (clinic, syndrome, ...).
    window
        How many of each series' latest points to look at (1: today, or this week).
    limit
        At most this many alerts are returned.
    per_series
        At most this many alerts per series (its worst ones): a clinic whose wave lasts a week
        is one line, not seven.

    Returns
    -------
    AlertDigest
        ``alerts`` sorted by severity, then by excess counts, then most recent first;
        ``hidden`` counts the alarms in the window that were not returned.

    Raises
    ------
    DetectorParameterError
        ``window``, ``limit`` or ``per_series`` is below 1.
    """
    for name, value in (("window", window), ("limit", limit), ("per_series", per_series)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DetectorParameterError(f"{name} must be an integer >= 1, got {value!r}")

    def order(alert: Alert) -> tuple[float, float, int, str]:
        return (-alert.severity, -alert.excess, -alert.index, repr(alert.key))

    kept: list[Alert] = []
    total = 0
    for key, result in results.items():
        start = max(result.observed.size - window, result.first)
        hits = [
            Alert(
                key=key,
                index=i,
                observed=float(result.observed[i]),
                upperbound=float(result.upperbound[i]),
                statistic=float(result.statistic[i]),
                severity=float(result.statistic[i] - result.threshold),
            )
            for i in range(start, result.observed.size)
            if result.alarm[i]
        ]
        total += len(hits)
        kept.extend(sorted(hits, key=order)[:per_series])
    shown = tuple(sorted(kept, key=order)[:limit])
    return AlertDigest(alerts=shown, hidden=total - len(shown))
