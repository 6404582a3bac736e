"""Input checks the detectors share (EARS in ears.py, Farrington in farrington.py), so that both
refuse the same series with the same ``CountSeriesError`` and read a real parameter the same way."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from coordinator.surveillance.errors import CountSeriesError

__all__ = ["check_series", "is_real"]


def check_series(series: ArrayLike) -> np.ndarray:
    """``series`` as a float64 array, or a ``CountSeriesError`` naming why it is not a count series:
    not 1-D, not real numbers, NaN or infinite values, negative counts."""
    try:
        y = np.asarray(series)
    except (TypeError, ValueError) as exc:  # ragged lists
        raise CountSeriesError(f"a count series must be a 1-D array of numbers: {exc}") from exc
    if y.ndim != 1:
        raise CountSeriesError(f"a count series must be one-dimensional, got shape {y.shape}")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
        raise CountSeriesError(f"a count series must hold real numbers, got dtype {y.dtype}")
    y = y.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise CountSeriesError(f"a count series has {bad.size} missing or infinite value(s), first at index {bad[0]}")
    neg = np.flatnonzero(y < 0)
    if neg.size:
        raise CountSeriesError(f"a count series has {neg.size} negative count(s), first {y[neg[0]]:g} at index {neg[0]}")
    return y


def is_real(value: object) -> bool:
    """Whether ``value`` is a real number (Python or numpy), ``bool`` excluded."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
