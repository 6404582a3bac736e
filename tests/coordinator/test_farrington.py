"""The Farrington detector checked week by week against R's ``surveillance::farrington`` on the same
series and control (issue 15), plus the input errors R does not name.

R runs once for the module (``run_r`` of test_ears.py): for every series x setting it runs
``farrington`` on an ``sts`` with ``range`` = the weeks with ``b`` full years of reference values,
and ``algo.farrington`` on the same data for what ``farrington`` does not return (the trend kept, and
``control$pd[, 2]``, the interval's median ``mu0``); both agree by construction, which the script
checks. Upper bounds, alarms, trends and ``mu0`` are compared at every judged week.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from coordinator.surveillance import CountSeriesError, DetectorParameterError, FarringtonResult, farrington
from tests.coordinator.test_ears import run_r, write_series

# (b, w, alpha, reweight, trend, powertrans, (cases, period)); the first is R's default control.
SETTINGS = [
    (5, 3, 0.05, True, True, "2/3", (5, 4)),
    (3, 2, 0.01, True, True, "1/2", (5, 4)),
    (5, 3, 0.05, False, True, "2/3", (5, 4)),
    (4, 1, 0.1, True, False, "none", (3, 2)),
    (2, 3, 0.05, True, True, "2/3", (5, 4)),  # b < 3: a trend is fitted, never kept
]

R_SCRIPT = r"""
suppressPackageStartupMessages(library(surveillance))
args <- commandArgs(trailingOnly = TRUE)
series <- read.csv(args[1]); settings <- read.csv(args[2], stringsAsFactors = FALSE)
out <- file(args[3], "w")
writeLines("series,setting,t,upperbound,alarm,trend,mu0", out)
for (id in unique(series$series)) {
  y <- series$count[series$series == id]
  s <- sts(observed = y, frequency = 52)
  for (k in seq_len(nrow(settings))) {
    st <- settings[k, ]
    ctl <- list(range = (52 * st$b + st$w + 1):length(y), b = st$b, w = st$w, alpha = st$alpha,
                reweight = st$reweight, trend = st$trend, powertrans = st$powertrans,
                limit54 = c(st$cases, st$period))
    r <- farrington(s, control = ctl)
    a <- algo.farrington(sts2disProg(s), control = ctl)
    stopifnot(identical(as.vector(r@upperbound), as.vector(a$upperbound)),
              identical(as.logical(r@alarm), as.logical(a$alarm)))
    writeLines(sprintf("%s,%d,%d,%.17g,%d,%d,%.17g", id, k - 1, ctl$range, r@upperbound[, 1],
                       as.integer(r@alarm[, 1]), as.integer(a$trend[, 1]), a$control$pd[, 2]), out)
  }
}
close(out)
cat(R.version.string, "| surveillance", as.character(packageVersion("surveillance")), "\n")
"""


def _series() -> dict[str, np.ndarray]:
    """Seeded weekly series, each at least 52 x 5 + 3 + 1 weeks long."""
    rng = np.random.default_rng(1996)
    week = np.arange(364)
    seasonal = rng.poisson(20 + 10 * np.sin(2 * np.pi * week / 52))
    seasonal[340:346] += [5, 12, 25, 30, 18, 8]  # an outbreak in the last year
    # past outbreaks in the reference years, on overdispersed counts: what reweighting is for
    past = rng.negative_binomial(5, 5 / (5 + 30 + 12 * np.cos(2 * np.pi * week / 52)))
    for at in (290 - 52 * 2, 300 - 52 * 4, 320 - 52):
        past[at:at + 3] += [30, 45, 25]
    growing = rng.poisson(6 * np.exp(0.006 * week[:330]) * (1 + 0.3 * np.sin(2 * np.pi * week[:330] / 52)))
    sparse = rng.poisson(0.4, size=320)
    sparse[[280, 300]] = [4, 3]  # under 5 in four weeks: limit54 bites
    sparse[310:312] = [5, 6]  # enough cases to alarm
    zeros = np.zeros(300, dtype=int)  # reference windows of zeros: mu0 at the log link's floor
    zeros[285:300] = [0, 1, 0, 0, 7, 0, 0, 0, 2, 3, 1, 0, 9, 4, 0]
    return {"seasonal_outbreak": seasonal, "past_outbreaks": past, "growing": growing, "sparse": sparse,
            "zeros_then_cases": zeros}


def _ours(y: np.ndarray, setting: tuple) -> FarringtonResult:
    b, w, alpha, reweight, trend, powertrans, limit54 = setting
    return farrington(y, b=b, w=w, alpha=alpha, reweight=reweight, trend=trend, powertrans=powertrans, limit54=limit54)


@pytest.fixture(scope="module")
def r_farrington(tmp_path_factory) -> tuple[dict[str, np.ndarray], dict[tuple[str, int], dict[str, np.ndarray]]]:
    work = tmp_path_factory.mktemp("farrington")
    series = _series()
    write_series(work, series)
    with open(work / "settings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["b", "w", "alpha", "reweight", "trend", "powertrans", "cases", "period"])
        w.writerows([b, ww, a, str(rw).upper(), str(tr).upper(), pt, c, p] for b, ww, a, rw, tr, pt, (c, p) in SETTINGS)
    rows: dict[tuple[str, int], list] = {}
    with open(run_r(work, R_SCRIPT, "farrington")) as f:
        for r in csv.DictReader(f):
            rows.setdefault((r["series"], int(r["setting"])), []).append(
                (int(r["t"]) - 1, float(r["upperbound"]), r["alarm"] == "1", r["trend"] == "1", float(r["mu0"])))
    return series, {k: dict(zip(("t", "upperbound", "alarm", "trend", "mu0"), map(np.array, zip(*v))))
                    for k, v in rows.items()}


@pytest.mark.parametrize("k", range(len(SETTINGS)))
def test_upper_bounds_and_alarms_match_r_week_by_week(r_farrington, k):
    series, r = r_farrington
    setting = SETTINGS[k]
    for name, y in series.items():
        ours, theirs = _ours(y, setting), r[name, k]
        t = theirs["t"]
        assert t[0] == ours.first and t[-1] == y.size - 1, (name, setting)
        # R writes 0 where limit54 bites; its bound is positive everywhere else
        assert (ours.few_cases[t] == (theirs["upperbound"] == 0)).all(), (name, setting)
        np.testing.assert_allclose(np.where(ours.few_cases[t], 0.0, ours.upperbound[t]), theirs["upperbound"],
                                   rtol=1e-10, atol=0, err_msg=f"{name} {setting}")
        np.testing.assert_allclose(ours.expected[t], theirs["mu0"], rtol=1e-10, atol=0, err_msg=f"{name} {setting}")
        assert (ours.alarm[t] == theirs["alarm"]).all(), (name, setting, np.flatnonzero(ours.alarm[t] != theirs["alarm"]))
        assert (ours.trend_kept[t] == theirs["trend"]).all(), (name, setting)
        assert not ours.alarm[: ours.first].any() and np.isnan(ours.upperbound[: ours.first]).all()


def test_the_comparison_exercises_every_rule(r_farrington):
    """The series above reach each branch, so a match is not a match of trivial cases."""
    series, r = r_farrington
    default = {name: r[name, 0] for name in series}
    outbreak = default["seasonal_outbreak"]
    assert outbreak["alarm"][(outbreak["t"] >= 340) & (outbreak["t"] < 346)].sum() >= 3  # the planted wave
    assert default["growing"]["trend"].mean() > 0.5  # a significant trend kept most weeks
    assert not r["growing", 4]["trend"].any()  # b = 2: never kept
    assert (default["sparse"]["upperbound"] == 0).any() and default["sparse"]["alarm"].any()  # limit54 both ways
    assert default["zeros_then_cases"]["mu0"].min() < 1e-10  # the log link's floor
    # reweighting changes bounds where past outbreaks sit in the reference years
    assert np.abs(r["past_outbreaks", 0]["upperbound"] / r["past_outbreaks", 2]["upperbound"] - 1).max() > 0.05


def test_limit54_counts_the_current_week():
    ones = np.ones(300, dtype=int)  # 4 cases in any four weeks: too few to alarm, whatever the bound
    quiet = farrington(ones)
    judged = slice(quiet.first, None)
    assert quiet.few_cases[judged].all() and (quiet.score[judged] == 0).all() and not quiet.alarm.any()
    loud = farrington(np.r_[ones[:-1], 40])  # 3 cases in the weeks before, 43 with the current one
    assert not loud.few_cases[-1] and loud.alarm[-1] and loud.upperbound[-1] < 40


@pytest.mark.parametrize(("b", "w", "needed"), [(5, 3, 264), (1, 2, 55), (3, 0, 157), (1, 25, 78)])
def test_too_short_a_series_names_the_weeks_it_needs(b, w, needed):
    with pytest.raises(CountSeriesError, match=f"needs at least {needed} weeks .* the series has {needed - 1}"):
        farrington(np.ones(needed - 1), b=b, w=w)
    result = farrington(np.ones(needed), b=b, w=w)
    assert result.first == needed - 1 and not np.isnan(result.upperbound[-1])


@pytest.mark.parametrize(("bad", "reason"), [
    ([1.0, math.nan] * 150, r"150 missing or infinite value\(s\), first at index 1"),
    ([2] * 299 + [-1], r"1 negative count\(s\), first -1 at index 299"),
    (np.r_[np.ones(150), 2.5, np.ones(149)], r"whole counts .* 1 non-integer value\(s\), first 2.5 at index 150"),
    ([[1, 2]] * 300, "one-dimensional"),
    (["a"] * 300, "real numbers"),
])
def test_bad_series_raise_a_count_series_error(bad, reason):
    with pytest.raises(CountSeriesError, match=reason):
        farrington(bad)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("limit54", [(5, 4), (0, 1)])
def test_an_all_zero_series_is_defined_and_quiet(limit54):
    """Years without a case: every reference window is zeros, ``mu0`` sits at the log link's floor and
    the bound just above it, as R 1.20.3's ``algo.farrington`` gives on the same series (mu0
    3.7751345442794609e-12 and, with limit54 (0, 1) where it reports a bound, U 2.0983361033646117e-03;
    no alarm, no trend); no NaN, no warning. With ``limit54 = (0, 1)`` the score is computed, negative."""
    result = farrington(np.zeros(300, dtype=int), limit54=limit54)
    judged = slice(result.first, None)
    np.testing.assert_allclose(result.expected[judged], 3.7751345442794609e-12, rtol=1e-10, atol=0)
    np.testing.assert_allclose(result.upperbound[judged], 2.0983361033646117e-03, rtol=1e-10, atol=0)
    assert (result.dispersion[judged] == 1.0).all() and not result.trend_kept.any() and not result.alarm.any()
    assert (result.few_cases[judged] == (limit54 == (5, 4))).all()
    assert ((result.score[judged] == 0) if limit54 == (5, 4) else (result.score[judged] < 0)).all()


@pytest.mark.parametrize("kwargs", [{"b": 0}, {"b": 2.0}, {"w": -1}, {"b": 1, "w": 0}, {"alpha": 0.0},
                                    {"alpha": 1.0}, {"reweight": 1}, {"trend": "yes"}, {"powertrans": "1/3"},
                                    {"limit54": (5,)}, {"limit54": (-1, 4)}, {"limit54": (5, 0)},
                                    {"limit54": (5, 400)}, {"w": 26}, {"b": 1, "w": 60}])
def test_bad_parameters_raise_a_usage_error(kwargs):
    with pytest.raises(DetectorParameterError):
        farrington(np.ones(400, dtype=int), **kwargs)
