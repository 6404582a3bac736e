"""Errors of the syndromic-surveillance detectors (their place in the tree: ``models.errors``).

::

    SiteDataError (5)        federation.errors
    └── CountSeriesError                        a count series cannot be monitored (NaN, negative, too short)
    DetectorParameterError (2)                  a detector or ranking parameter is out of its domain
"""

from __future__ import annotations

from federation.errors import SiteDataError
from models.errors import ExitCode, FenjiError

__all__ = ["CountSeriesError", "DetectorParameterError"]


class CountSeriesError(SiteDataError):
    """A count series is not something EARS can monitor: not one-dimensional, not numeric, NaN or
    infinite, negative, or shorter than the baseline plus the guard band plus one point."""


class DetectorParameterError(FenjiError):
    """A detector parameter (method, baseline, minSigma, alpha) or a ranking cap is out of its domain."""

    exit_code = ExitCode.USAGE
