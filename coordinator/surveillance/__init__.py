"""Syndromic surveillance at the coordinator: EARS C1/C2/C3 on daily or weekly counts per clinic or
district, Farrington on weekly series with years of history, and alarms ranked across series. numpy
(and scipy's t distribution for Farrington's trend test): the counts come in already aggregated."""

from __future__ import annotations

from coordinator.surveillance.alerts import Alert, AlertDigest, rank_alerts
from coordinator.surveillance.ears import (
    DEFAULT_ALPHA,
    METHODS,
    EarsDetector,
    EarsResult,
    ears_c1,
    ears_c2,
    ears_c3,
    earsc,
)
from coordinator.surveillance.errors import CountSeriesError, DetectorParameterError
from coordinator.surveillance.farrington import POWERS, WEEKS_PER_YEAR, FarringtonResult, farrington

__all__ = [
    "DEFAULT_ALPHA",
    "METHODS",
    "POWERS",
    "WEEKS_PER_YEAR",
    "Alert",
    "AlertDigest",
    "CountSeriesError",
    "DetectorParameterError",
    "EarsDetector",
    "EarsResult",
    "FarringtonResult",
    "ears_c1",
    "ears_c2",
    "ears_c3",
    "earsc",
    "farrington",
    "rank_alerts",
]
