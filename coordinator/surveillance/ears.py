"""The CDC's Early Aberration Reporting System detectors C1, C2 and C3 on one count series.

Definitions (Hutwagner et al. 2003; Fricker, Hegler and Dunfee 2008; R ``surveillance::earsC``),
for a series ``Y`` of daily or weekly counts, a baseline of ``n`` points (7 by default) and
``z = qnorm(1 - alpha)``:

- C1: the baseline is ``Y(t-n) .. Y(t-1)``; ``Ybar`` its mean and ``S`` its sample standard
  deviation (divisor ``n - 1``), floored at ``minSigma``. ``C1(t) = (Y(t) - Ybar) / S``; the upper
  bound is ``Ybar + z S`` and the alarm is ``Y(t) > Ybar + z S``.
- C2: the same with a guard band of two points, baseline ``Y(t-n-2) .. Y(t-3)``.
- C3: ``C3(t) = sum_{i=t-2}^{t} max(0, C2(i) - 1)``, alarm when ``C3(t) > z``. Its upper bound is
  the count at which today's C3 would reach ``z``, given the two previous days:
  ``Ybar2(t) + S2(t) (1 + z - L(t))`` with ``L(t)`` the two lagged terms; ``-inf`` when ``L(t)`` is
  already above ``z`` (no count today can avoid the alarm).

``alpha`` defaults to 0.001 for C1 and C2 and to 0.025 for C3, the CDC's choices as R's ``earsC``
documents them. The first monitored point is the first with a full baseline: index ``n`` (C1),
``n + 2`` (C2) and ``n + 4`` (C3), counted from 0; earlier points carry NaN and no alarm.

R's ``earsC`` (checked up to 1.26.0) matches C1 and C2 exactly; its C3 code computes the upper
bound as ``Y(t) + S2(t) (z - L(t))``, so its C3 alarm ignores the current day (see
docs/surveillance.md and tests/coordinator/test_ears.py, which pins that difference).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike

from coordinator.surveillance.errors import CountSeriesError, DetectorParameterError
from coordinator.surveillance.series import check_series, is_real

__all__ = ["DEFAULT_ALPHA", "METHODS", "EarsDetector", "EarsResult", "ears_c1", "ears_c2", "ears_c3", "earsc"]

METHODS = ("C1", "C2", "C3")
DEFAULT_ALPHA = {"C1": 0.001, "C2": 0.001, "C3": 0.025}
MIN_BASELINE = 3  # R's earsC refuses less: a standard deviation of two points means nothing
_FIRST_OFFSET = {"C1": 0, "C2": 2, "C3": 4}  # points needed beyond the baseline before the first alarm


@dataclass(frozen=True, eq=False)
class EarsResult:
    """One detector run: arrays aligned with the input series (NaN, no alarm, before ``first``).

    Attributes
    ----------
    method, baseline, min_sigma, alpha
        The parameters used (``alpha`` resolved from the method's default when it was ``None``).
    threshold
        ``z = qnorm(1 - alpha)``, the statistic's alarm level.
    first
        Index of the first monitored point.
    observed
        The counts, as float64.
    expected, sigma
        The baseline's mean and its standard deviation floored at ``min_sigma`` (for C3: the C2
        baseline of the same point).
    statistic
        C1, C2 or C3 at each point; ``+inf`` / ``-inf`` when the baseline is flat (``sigma == 0``)
        and the count is above / below it, ``0`` when equal.
    upperbound
        The count above which the point alarms.
    alarm
        Boolean alarms.
    """

    method: str
    baseline: int
    min_sigma: float
    alpha: float
    threshold: float
    first: int
    observed: np.ndarray
    expected: np.ndarray
    sigma: np.ndarray
    statistic: np.ndarray
    upperbound: np.ndarray
    alarm: np.ndarray

    @property
    def severity(self) -> np.ndarray:
        """How far each point's statistic is over the threshold (negative: under it)."""
        return self.statistic - self.threshold


def _check_parameters(method: str, baseline: int, min_sigma: float, alpha: float | None) -> tuple[str, int, float, float]:
    if method not in METHODS:
        raise DetectorParameterError(f"unknown EARS method {method!r}: use one of {', '.join(METHODS)}")
    if isinstance(baseline, bool) or not isinstance(baseline, (int, np.integer)) or baseline < MIN_BASELINE:
        raise DetectorParameterError(f"baseline must be an integer >= {MIN_BASELINE}, got {baseline!r}")
    if not is_real(min_sigma) or not np.isfinite(min_sigma) or min_sigma < 0:
        raise DetectorParameterError(f"min_sigma must be a finite number >= 0, got {min_sigma!r}")
    alpha = DEFAULT_ALPHA[method] if alpha is None else alpha
    # alpha >= 0.5 would put the threshold at or below the baseline mean: every ordinary day alarms
    if not is_real(alpha) or not 0 < alpha < 0.5:
        raise DetectorParameterError(f"alpha must lie in (0, 0.5), got {alpha!r}")
    return method, int(baseline), float(min_sigma), float(alpha)


def _baseline_stats(y: np.ndarray, baseline: int, lag: int, min_sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and floored standard deviation of ``y[t-lag-baseline+1 .. t-lag]`` at each ``t`` (NaN
    where the window would start before the series)."""
    mean = np.full(y.size, np.nan)
    sigma = np.full(y.size, np.nan)
    start = baseline + lag - 1  # first t whose window is complete
    if y.size > start:
        windows = sliding_window_view(y[: y.size - lag], baseline)
        mean[start:] = windows.mean(axis=1)
        sigma[start:] = np.maximum(windows.std(axis=1, ddof=1), min_sigma)
    return mean, sigma


def _zscore(y: np.ndarray, mean: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    # a flat baseline (sigma 0) makes any excess infinitely unusual and no excess not unusual at all
    flat = np.where(y > mean, np.inf, np.where(y < mean, -np.inf, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sigma > 0, (y - mean) / sigma, np.where(np.isnan(sigma), np.nan, flat))


def earsc(
    series: ArrayLike, *, method: str = "C1", baseline: int = 7, min_sigma: float = 0.0, alpha: float | None = None
) -> EarsResult:
    """Run EARS C1, C2 or C3 on a series of non-negative counts (daily or weekly); R's ``earsC``.

    Parameters
    ----------
    series
        Counts in time order, one per day or week.
    method
        ``"C1"``, ``"C2"`` or ``"C3"``.
    baseline
        Number of points in the baseline window (R's ``baseline``), at least 3.
    min_sigma
        Floor on the baseline's standard deviation (R's ``minSigma``); 0.5 or 1 keeps sparse series
        from alarming on a single case after a run of zeros.
    alpha
        Upper-tail probability of the threshold ``qnorm(1 - alpha)``; ``None`` takes the method's
        default (``DEFAULT_ALPHA``).

    Returns
    -------
    EarsResult

    Raises
    ------
    CountSeriesError
        The series is not 1-D real numbers, holds NaN, infinities or negatives, or has no point
        with a full baseline.
    DetectorParameterError
        A parameter is out of its domain.
    """
    method, baseline, min_sigma, alpha = _check_parameters(method, baseline, min_sigma, alpha)
    y = check_series(series)
    first = baseline + _FIRST_OFFSET[method]
    if y.size <= first:
        raise CountSeriesError(
            f"EARS {method} with a baseline of {baseline} needs at least {first + 1} points, the series has {y.size}"
        )
    # statistics.NormalDist uses Wichura's AS241, the algorithm of R's qnorm
    z = NormalDist().inv_cdf(1.0 - alpha)

    lag = 1 if method == "C1" else 3
    mean, sigma = _baseline_stats(y, baseline, lag, min_sigma)
    c = _zscore(y, mean, sigma)
    if method in ("C1", "C2"):
        statistic, upperbound = c, mean + z * sigma
        with np.errstate(invalid="ignore"):
            alarm = y > upperbound  # R's rule, strict; NaN before `first` compares False
    else:
        excess = np.maximum(c - 1.0, 0.0)  # NaN before the C2 baseline stays NaN
        lagged = np.full(y.size, np.nan)
        lagged[2:] = excess[1:-1] + excess[:-2]
        statistic = excess + lagged
        with np.errstate(invalid="ignore"):
            reachable = lagged <= z
            room = np.where(reachable, 1.0 + z - lagged, 0.0)  # 0 keeps 0 * inf out when unreachable
            upperbound = np.where(reachable, mean + sigma * room, -np.inf)
            alarm = statistic > z
    statistic[:first] = np.nan
    upperbound[:first] = np.nan
    alarm[:first] = False
    return EarsResult(
        method=method,
        baseline=baseline,
        min_sigma=min_sigma,
        alpha=alpha,
        threshold=z,
        first=first,
        observed=y,
        expected=mean,
        sigma=sigma,
        statistic=statistic,
        upperbound=upperbound,
        alarm=alarm,
    )


def ears_c1(series: ArrayLike, *, baseline: int = 7, min_sigma: float = 0.0, alpha: float | None = None) -> EarsResult:
    """EARS C1: the last ``baseline`` points as the baseline (``earsc`` has the details)."""
    return earsc(series, method="C1", baseline=baseline, min_sigma=min_sigma, alpha=alpha)


def ears_c2(series: ArrayLike, *, baseline: int = 7, min_sigma: float = 0.0, alpha: float | None = None) -> EarsResult:
    """EARS C2: C1 with a guard band of two points before the baseline (``earsc`` has the details)."""
    return earsc(series, method="C2", baseline=baseline, min_sigma=min_sigma, alpha=alpha)


def ears_c3(series: ArrayLike, *, baseline: int = 7, min_sigma: float = 0.0, alpha: float | None = None) -> EarsResult:
    """EARS C3: the C2 excesses over 1 of today and the two days before, summed (``earsc`` has the details)."""
    return earsc(series, method="C3", baseline=baseline, min_sigma=min_sigma, alpha=alpha)


class EarsDetector:
    """``earsc`` behind scikit-learn's contract: ``__init__`` stores, ``fit`` computes, fitted
    attributes end in ``_``.

    Parameters are those of ``earsc``; ``fit`` checks them.
    """

    def __init__(self, *, method: str = "C1", baseline: int = 7, min_sigma: float = 0.0, alpha: float | None = None) -> None:
        self.method = method
        self.baseline = baseline
        self.min_sigma = min_sigma
        self.alpha = alpha

    def fit(self, series: ArrayLike) -> EarsDetector:
        """Run the detector on ``series``; sets ``result_``, ``statistic_``, ``upperbound_``, ``alarm_``."""
        self.result_ = earsc(series, method=self.method, baseline=self.baseline, min_sigma=self.min_sigma, alpha=self.alpha)
        self.statistic_ = self.result_.statistic
        self.upperbound_ = self.result_.upperbound
        self.alarm_ = self.result_.alarm
        return self
