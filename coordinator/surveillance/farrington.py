"""The Farrington detector (Farrington, Andrews, Beale and Catchpole 1996) on a weekly count series,
as R's ``surveillance::farrington`` (``algo.farrington`` with ``algo.farrington.fitGLM.fast``) does it.

For week ``t`` (1-based, as R counts) the reference values are the weeks ``t - 52 i - w .. t - 52 i + w``
for ``i = 1 .. b``: ``b (2w + 1)`` counts from the same season of the ``b`` previous years. Then:

1. A quasi-Poisson GLM with log link, ``log mu = a + beta * week`` (the week index as R's ``wtime``; no
   ``beta`` when ``trend=False``), fitted by R's ``glm.fit`` IRLS: start ``mu = y + 0.1``, stop when the
   deviance changes by less than ``1e-8`` relative (``|dev - devold| / (|dev| + 0.1)``), at most 25
   iterations, ``mu`` floored at machine epsilon. A trend fit that does not converge is refitted without.
2. Overdispersion ``phi = max(1, Pearson X^2 / (n - p))``, with R's working weights and residuals.
3. ``reweight=True``: Anscombe residuals ``s = 3/2 (y^(2/3) mu^(-1/6) - mu^(1/2)) / sqrt(phi (1 - h))``
   (``h`` the hat values), weights ``gamma s^-2`` where ``s > 1`` and ``gamma`` elsewhere, ``gamma`` making
   them sum to ``n``; the GLM is refitted with them as prior weights and ``phi`` re-estimated.
4. The trend is kept only if ``b >= 3``, its t-test gives ``p < 0.05`` and the predicted ``mu0`` does
   not exceed the largest reference count; otherwise steps 1-3 are redone without it. The t-test
   (``n - 2`` degrees of freedom) scales the slope's variance by the *unfloored* dispersion, Pearson
   ``X^2 / (n - p)`` of the fit after step 3 as R's ``summary.glm(model)`` re-estimates it, not by
   ``phi``: an underdispersed fit (below 1) tests its trend on its own, smaller scale.
5. ``mu0`` is predicted at ``t`` with its standard error ``se`` (``phi`` as dispersion), ``tau = phi +
   se^2 / mu0``, and the upper limit of the two-sided ``1 - alpha`` prediction interval on the
   transformed scale is ``U = (mu0^e + z sqrt(c tau))^(1/e)``, ``z = qnorm(1 - alpha/2)``: ``e = 2/3, c =
   4/9 mu0^(1/3)`` ("2/3", skewness correcting, the default), ``e = 1/2, c = 1/4`` ("1/2") or ``e = 1,
   c = mu0`` ("none").
6. ``limit54 = (cases, period)``: fewer than ``cases`` counts in the last ``period`` weeks (the current
   one included) means no alarm. Otherwise the score is ``(y - mu0) / (U - mu0)`` and the week alarms
   when it is above 1.

Exact (to rounding, tests/coordinator/test_farrington.py): all of the above, with R's defaults ``b=5,
w=3, alpha=0.05, reweight, trend, powertrans="2/3", limit54=(5, 4)``. Choices: (a) only weeks with all
``b`` years of reference values are judged (index ``52 b + w`` on, from 0); R's ``farrington`` needs an
explicit ``range`` and also runs earlier weeks on the reference values that exist. (b) ``upperbound``
is ``U`` at every judged week; R reports 0 where ``limit54`` bites, which ``few_cases`` marks. (c) A
year is 52 weeks (R's ``freq = 52``; no date-based reference weeks). (d) R's ``glm.fit`` step halving
is not reproduced: log-link fits to counts inside their own range never produce a non-finite deviance.
(e) Counts must be whole numbers (R's quasi-Poisson ``glm`` takes any non-negative value): the
dispersion floor ``phi >= 1`` (variance at least the mean) and ``limit54``'s number of cases only mean
something on the scale of counts, so rates or averages would get silently wrong bounds. (f) ``w <= 25``
(R does not check): a window of ``2w + 1`` weeks must fit in a 52-week year, or it reaches the judged
week itself (``w >= 52``) or counts weeks of consecutive years twice (``26 <= w <= 51``).
Needs scipy (Student's t), which scikit-learn brings; ``qnorm`` is ``statistics.NormalDist``, R's AS241.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike
from scipy.linalg import solve_triangular
from scipy.stats import t as student_t

from coordinator.surveillance.errors import CountSeriesError, DetectorParameterError
from coordinator.surveillance.series import check_series, is_real

__all__ = ["POWERS", "WEEKS_PER_YEAR", "FarringtonResult", "farrington"]

WEEKS_PER_YEAR = 52  # R's freq for weekly series
POWERS = {"2/3": 2.0 / 3.0, "1/2": 0.5, "none": 1.0}  # R's powertrans -> exponent e
_EPS = np.finfo(np.float64).eps  # R's .Machine$double.eps: the log link's floor on mu
_EPSILON, _MAXIT = 1e-8, 25  # glm.control()
_TREND_LEVEL = 0.05  # the trend's significance level, fixed in R's code


@dataclass(frozen=True, eq=False)
class FarringtonResult:
    """One detector run: arrays aligned with the input series (NaN, no alarm, before ``first``).

    Attributes
    ----------
    b, w, alpha, reweight, trend, powertrans, limit54
        The parameters used.
    first
        Index of the first judged week, ``52 b + w``.
    observed
        The counts, as float64.
    expected
        ``mu0``, the predicted count.
    upperbound
        ``U``, the upper limit of the prediction interval (R reports 0 where ``few_cases``).
    dispersion
        ``phi`` of the final model (at least 1).
    trend_kept
        Whether the final model has the time trend.
    few_cases
        ``limit54`` applied: too few counts in the last weeks to alarm.
    score
        ``(y - mu0) / (U - mu0)``, 0 where ``few_cases`` (R's exceedance score ``X``).
    alarm
        ``score > 1``.
    """

    b: int
    w: int
    alpha: float
    reweight: bool
    trend: bool
    powertrans: str
    limit54: tuple[int, int]
    first: int
    observed: np.ndarray
    expected: np.ndarray
    upperbound: np.ndarray
    dispersion: np.ndarray
    trend_kept: np.ndarray
    few_cases: np.ndarray
    score: np.ndarray
    alarm: np.ndarray


@dataclass(frozen=True)
class _Fit:
    """What R's ``glm.fit`` returns that Farrington reads: coefficients, the final ``mu``, the
    (pre-update) working weights and the triangular factor and ``Q`` of the last IRLS step."""

    coef: np.ndarray
    mu: np.ndarray
    working_weights: np.ndarray
    r: np.ndarray
    q: np.ndarray
    converged: bool


def _deviance(y: np.ndarray, mu: np.ndarray, prior: np.ndarray) -> float:
    # quasipoisson()$dev.resids: y log(y / mu) is 0 at y = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(y > 0, prior * (y * np.log(y / mu) - (y - mu)), prior * mu)
    return float(np.sum(2.0 * terms))


def _glm_fit(x: np.ndarray, y: np.ndarray, prior: np.ndarray) -> _Fit:
    """R's ``glm.fit(x, y, weights=prior, family=quasipoisson(link="log"))``, step by step."""
    eta = np.log(y + 0.1)
    mu = np.maximum(np.exp(eta), _EPS)
    devold = _deviance(y, mu, prior)
    converged = False
    for _ in range(_MAXIT):
        mu_eta = np.maximum(np.exp(eta), _EPS)
        z = eta + (y - mu) / mu_eta
        w = np.sqrt(prior * mu_eta**2 / mu)
        q, r = np.linalg.qr(x * w[:, None])
        coef = solve_triangular(r, q.T @ (z * w))
        eta = x @ coef
        mu = np.maximum(np.exp(eta), _EPS)
        dev = _deviance(y, mu, prior)
        if abs(dev - devold) / (abs(dev) + 0.1) < _EPSILON:
            converged = True
            break
        devold = dev
    return _Fit(coef=coef, mu=mu, working_weights=w**2, r=r, q=q, converged=converged)


def _pearson_dispersion(fit: _Fit, y: np.ndarray) -> float:
    """``summary.glm(fit)$dispersion``: working weights times squared working residuals over n - p."""
    residuals = (y - fit.mu) / fit.mu  # mu.eta(eta) is mu under the log link
    return float(np.sum(fit.working_weights * residuals**2) / (y.size - fit.coef.size))


def _unscaled_cov(fit: _Fit) -> np.ndarray:
    r_inv = solve_triangular(fit.r, np.eye(fit.r.shape[0]))
    return r_inv @ r_inv.T  # R's chol2inv(R)


def _anscombe_weights(fit: _Fit, y: np.ndarray, phi: float) -> np.ndarray:
    """``algo.farrington.assign.weights(anscombe.residuals(fit, phi))``: down-weight past outbreaks."""
    hat = np.sum(fit.q**2, axis=1)
    hat[hat >= 1.0 - 10 * _EPS] = 1.0  # lm.influence's rounding
    with np.errstate(divide="ignore"):  # s = 0 (a perfect fit) and h = 1 divide as in R
        s = 1.5 * (y ** (2.0 / 3.0) * fit.mu ** (-1.0 / 6.0) - np.sqrt(fit.mu)) / np.sqrt(phi * (1.0 - hat))
        inverse_square = s**-2.0
    high = s > 1.0
    gamma = y.size / np.sum(np.where(high, inverse_square, 1.0))
    return np.where(high, gamma * inverse_square, gamma)


def _fit_glm_fast(x: np.ndarray, y: np.ndarray, reweight: bool) -> tuple[_Fit, float]:
    """R's ``algo.farrington.fitGLM.fast``: fit, floor the dispersion at 1, reweight and refit."""
    ones = np.ones(y.size)
    fit = _glm_fit(x, y, ones)
    if not fit.converged and x.shape[1] > 1:  # R: "No convergence with timeTrend -- trying without"
        x = x[:, :1]
        fit = _glm_fit(x, y, ones)
    phi = max(_pearson_dispersion(fit, y), 1.0)
    if reweight:
        fit = _glm_fit(x, y, _anscombe_weights(fit, y, phi))
        phi = max(_pearson_dispersion(fit, y), 1.0)
    return fit, phi


def _check_parameters(b, w, alpha, reweight, trend, powertrans, limit54) -> tuple[int, int, float, tuple[int, int]]:
    for name, value, low in (("b", b, 1), ("w", w, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise DetectorParameterError(f"{name} must be an integer >= {low}, got {value!r}")
    if 2 * w + 1 > WEEKS_PER_YEAR:
        raise DetectorParameterError(
            f"w must be at most {(WEEKS_PER_YEAR - 1) // 2}, got {w}: the reference window of 2w + 1 weeks around the"
            f" same week of each past year must fit in a {WEEKS_PER_YEAR}-week year, or the windows of consecutive"
            " years overlap and count weeks twice (w >= 26) and the last year's reaches the judged week (w >= 52)")
    if b * (2 * w + 1) < 3:  # the trend model needs a residual degree of freedom for its dispersion
        raise DetectorParameterError(f"b (2w + 1) reference weeks must be at least 3, got {b * (2 * w + 1)}")
    if not is_real(alpha) or not 0 < alpha < 1:
        raise DetectorParameterError(f"alpha must lie in (0, 1), got {alpha!r}")
    for name, flag in (("reweight", reweight), ("trend", trend)):
        if not isinstance(flag, bool):
            raise DetectorParameterError(f"{name} must be True or False, got {flag!r}")
    if powertrans not in POWERS:
        raise DetectorParameterError(f"unknown powertrans {powertrans!r}: use one of {', '.join(POWERS)}")
    try:
        cases, period = limit54
    except (TypeError, ValueError):
        raise DetectorParameterError(f"limit54 must be a pair (cases, period), got {limit54!r}") from None
    first = WEEKS_PER_YEAR * b + w
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (cases, period)) \
            or cases < 0 or not 1 <= period <= first + 1:
        raise DetectorParameterError(
            f"limit54 must be integers cases >= 0 and 1 <= period <= {first + 1} (52 b + w + 1), got {limit54!r}")
    return int(b), int(w), float(alpha), (int(cases), int(period))


def farrington(
    series: ArrayLike,
    *,
    b: int = 5,
    w: int = 3,
    alpha: float = 0.05,
    reweight: bool = True,
    trend: bool = True,
    powertrans: str = "2/3",
    limit54: tuple[int, int] = (5, 4),
) -> FarringtonResult:
    """Run the Farrington detector on a weekly count series; R's ``surveillance::farrington``.

    Parameters
    ----------
    series
        Weekly counts in time order, at least ``52 b + w + 1`` of them.
    b
        Years back to take reference weeks from (R's ``b``).
    w
        Half-width of the reference window around the same week of each past year (R's ``w``), at most
        25 so that the ``2w + 1`` weeks fit in one year.
    alpha
        The prediction interval is two-sided at ``1 - alpha`` (R's ``alpha``).
    reweight
        Down-weight reference weeks with large Anscombe residuals (past outbreaks) and refit.
    trend
        Fit a linear time trend on the log scale, kept only when the rules of step 4 allow it.
    powertrans
        ``"2/3"``, ``"1/2"`` or ``"none"``: the scale on which the interval is normal.
    limit54
        ``(cases, period)``: no alarm with fewer than ``cases`` counts in the last ``period`` weeks.

    Returns
    -------
    FarringtonResult

    Raises
    ------
    CountSeriesError
        The series is not 1-D whole non-negative finite numbers, or is too short to judge one week.
    DetectorParameterError
        A parameter is out of its domain.
    """
    b, w, alpha, limit54 = _check_parameters(b, w, alpha, reweight, trend, powertrans, limit54)
    y = check_series(series)
    fractional = np.flatnonzero(y != np.floor(y))
    if fractional.size:
        raise CountSeriesError(
            f"Farrington needs whole counts of cases, the series has {fractional.size} non-integer value(s), first"
            f" {y[fractional[0]]:g} at index {fractional[0]}: its dispersion floor of 1 and limit54 assume the"
            " scale of counts")
    first = WEEKS_PER_YEAR * b + w
    if y.size <= first:
        raise CountSeriesError(
            f"Farrington with b={b} years and w={w} weeks needs at least {first + 1} weeks ({WEEKS_PER_YEAR} x {b}"
            f" + {w} + 1: {b} years of reference weeks before the first judged one), the series has {y.size}")
    power = POWERS[powertrans]
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
    cases, period = limit54
    offsets = np.concatenate([np.arange(-WEEKS_PER_YEAR * i - w, -WEEKS_PER_YEAR * i + w + 1) for i in range(b, 0, -1)])

    nan = np.full(y.size, np.nan)
    expected, upperbound, dispersion, score = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    trend_kept = np.zeros(y.size, dtype=bool)
    few_cases = np.zeros(y.size, dtype=bool)
    for t in range(first, y.size):
        week = float(t + 1)  # R's wtime: 1-based
        reference = t + offsets
        response = y[reference]
        design = np.column_stack([np.ones(reference.size), reference + 1.0])
        fit, phi = _fit_glm_fast(design if trend else design[:, :1], response, reweight)
        if fit.coef.size == 2:
            slope_se = np.sqrt(_pearson_dispersion(fit, response) * _unscaled_cov(fit)[1, 1])
            with np.errstate(divide="ignore", invalid="ignore"):  # a perfect fit (se 0) divides as in R
                p = 2.0 * student_t.sf(abs(fit.coef[1] / slope_se), response.size - 2)
            mu_trend = max(np.exp(fit.coef @ [1.0, week]), _EPS)
            if not (b >= 3 and p < _TREND_LEVEL and mu_trend <= response.max()):
                fit, phi = _fit_glm_fast(design[:, :1], response, reweight)
        x0 = np.array([1.0, week])[: fit.coef.size]
        mu0 = max(np.exp(fit.coef @ x0), _EPS)
        se = np.sqrt(x0 @ _unscaled_cov(fit) @ x0 * phi) * mu0  # predict.glm(type="response", se.fit=TRUE)
        tau = phi + se**2 / mu0
        spread = {"2/3": 4.0 / 9.0 * mu0 ** (1.0 / 3.0), "1/2": 0.25, "none": mu0}[powertrans]
        bound = (mu0**power + z * np.sqrt(spread * tau)) ** (1.0 / power)
        enough = y[t - period + 1 : t + 1].sum() >= cases
        expected[t], upperbound[t], dispersion[t] = mu0, bound, phi
        trend_kept[t], few_cases[t] = fit.coef.size == 2, not enough
        score[t] = (y[t] - mu0) / (bound - mu0) if enough else 0.0
    with np.errstate(invalid="ignore"):
        alarm = score > 1.0  # NaN before `first` compares False
    return FarringtonResult(
        b=b, w=w, alpha=alpha, reweight=reweight, trend=trend, powertrans=powertrans, limit54=limit54,
        first=first, observed=y, expected=expected, upperbound=upperbound, dispersion=dispersion,
        trend_kept=trend_kept, few_cases=few_cases, score=score, alarm=alarm,
    )
