"""Syndromic surveillance at the coordinator: EARS C1/C2/C3 on daily or weekly counts per clinic or
district, and alarms ranked across series. Pure numpy: the counts come in already aggregated."""

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

__all__ = [
    "DEFAULT_ALPHA",
    "METHODS",
    "Alert",
    "AlertDigest",
    "CountSeriesError",
    "DetectorParameterError",
    "EarsDetector",
    "EarsResult",
    "ears_c1",
    "ears_c2",
    "ears_c3",
    "earsc",
    "rank_alerts",
]
