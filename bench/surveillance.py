"""EARS C1, C2 and C3 on the synthetic clinics' syndrome series: is the influenza-like wave found, how
soon, and how many false alerts a year come with it.

The series are the default synthetic clinics' (``simulation/synth.py``) over ``days`` days (a year by
default; clinic sizes scaled so a day has as many visits as in the demo's half year), counted per
district, syndrome and day (or ISO week) from each visit's complaint and temperature through the
syndrome table (``models.syndromes``), with the complaint text or on the coded complaint alone
(``text``; the demo's tasks have no text). These are the counts a district's encrypted sum decrypts
to (``tests/simulation/test_surveillance_query.py`` checks the federation against them), so the
federation is left out here to keep this fast.

- **Sensitivity:** per seed, the wave (``simulation.outbreak.Outbreak``, at the two neighbouring
  clinics of one district) is detected if a febrile syndrome series of its district alarms on a
  day (or in a week) of the wave; days to detection count from the wave's first day (0 = that day).
  Several wave sizes (extra visits per clinic) are run; the default wave is one of them.
- **False alerts:** the same seeds without a wave: every alarm of every series (both districts,
  every syndrome) is false; reported per series-year, per year for the whole federation, and as the
  days (weeks) per district-year with at least one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import environment, save_figure, subplots
from coordinator.surveillance import METHODS, earsc
from models.syndromes import match_syndromes, syndrome_codes
from simulation.outbreak import SERIES_DAYS, SERIES_START, Outbreak
from simulation.synth import (
    DEFAULT_CLINICS,
    NEIGHBOURS,
    generate_clinic,
    outbreak_visits,
)

__all__ = ["SIGNAL", "plot", "run", "series"]

SIGNAL = ("febrile_respiratory", "undifferentiated_fever")  # where the wave's febrile patients are counted
BASELINE, MIN_SIGMA = 7, 1.0  # the detectors' settings (min_sigma: the series are sparse)


def series(seed: int, *, days: int, outbreak: Outbreak | None, text: bool = True) -> dict[str, np.ndarray]:
    """``district -> days x syndromes`` counts of the default clinics over ``days`` days."""
    rng = np.random.default_rng(seed)
    codes = syndrome_codes()
    out: dict[str, np.ndarray] = {}
    for profile in DEFAULT_CLINICS:
        scaled = replace(profile, size=round(profile.size * days / SERIES_DAYS))
        frame = generate_clinic(scaled, rng, text_seed=seed, days=days)
        if outbreak is not None and profile.name in outbreak.clinics:
            frame = pd.concat([frame, outbreak_visits(profile, outbreak, seed=seed)], ignore_index=True)
        if not text:
            frame = frame.drop(columns="complaint_text")
        counts = out.setdefault(profile.district, np.zeros((days, len(codes))))
        day = (pd.to_datetime(frame["visit_date"]) - pd.Timestamp(SERIES_START)).dt.days.to_numpy()
        for i, visit in zip(day, frame.to_dict("records")):
            visit = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in visit.items()}
            for match in match_syndromes(visit):
                counts[i, codes.index(match.syndrome.code)] += 1
    return out


def _weekly(daily: np.ndarray) -> np.ndarray:
    weeks = len(daily) // 7
    return daily[: weeks * 7].reshape(weeks, 7, -1).sum(axis=1)


def _alarms(counts: np.ndarray, method: str) -> tuple[np.ndarray, int]:
    """Alarm flags (points x syndromes) and the monitored points per series."""
    flags = np.zeros(counts.shape, dtype=bool)
    first = 0
    for j in range(counts.shape[1]):
        result = earsc(counts[:, j], method=method, baseline=BASELINE, min_sigma=MIN_SIGMA)
        flags[:, j], first = result.alarm, result.first
    return flags, counts.shape[0] - first


def _detection(counts: dict[str, np.ndarray], wave: Outbreak, district: str, method: str, interval: str) -> int | None:
    """Days from the wave's first day to its first alarm in a ``SIGNAL`` series of its district (a weekly
    alarm counts at the end of its week, when the week is complete), or None if it has none."""
    step = 1 if interval == "day" else 7
    data = counts[district] if interval == "day" else _weekly(counts[district])
    flags, _ = _alarms(data, method)
    columns = [syndrome_codes().index(s) for s in SIGNAL]
    first, last = wave.start_day // step, min((wave.start_day + wave.days - 1) // step, len(data) - 1)
    hits = [t for t in range(first, last + 1) if flags[t, columns].any()]
    return None if not hits else hits[0] * step + step - 1 - wave.start_day


def _evaluate(seeds: int, days: int, sizes: tuple[int, ...], start_day: int, district: str, text: bool,
              progress: Callable[[], None] | None) -> tuple[dict, np.ndarray | None]:
    """``interval -> method -> figures`` for one way of counting, and seed 0's default-wave example."""
    detection: dict = {i: {m: {s: [] for s in sizes} for m in METHODS} for i in ("day", "week")}
    false: dict = {i: {m: {"alarms": 0, "alert_points": 0, "years": 0.0} for m in METHODS} for i in ("day", "week")}
    example, districts = None, 0
    for seed in range(seeds):
        calm = series(seed, days=days, outbreak=None, text=text)
        districts = len(calm)
        for interval in ("day", "week"):
            for method in METHODS:
                for counts in calm.values():
                    data = counts if interval == "day" else _weekly(counts)
                    flags, monitored = _alarms(data, method)
                    tally = false[interval][method]
                    tally["alarms"] += int(flags.sum())
                    tally["alert_points"] += int(flags.any(axis=1).sum())  # days (weeks) with any alert
                    tally["years"] += monitored * (7 if interval == "week" else 1) / 365.0  # of one district
        for size in sizes:
            wave = Outbreak(start_day=start_day, visits=size)
            counts = series(seed, days=days, outbreak=wave, text=text)
            if seed == 0 and size == Outbreak().visits:
                example = counts[district][:, syndrome_codes().index(SIGNAL[0] if text else SIGNAL[1])]
            for interval in ("day", "week"):
                for method in METHODS:
                    detection[interval][method][size].append(_detection(counts, wave, district, method, interval))
        if progress:
            progress()
    results: dict = {}
    for interval in ("day", "week"):
        results[interval] = {}
        for method in METHODS:
            tally = false[interval][method]
            found = {size: [d for d in found if d is not None] for size, found in detection[interval][method].items()}
            results[interval][method] = {
                "sensitivity": {str(s): len(found[s]) / seeds for s in sizes},
                "median_days_to_detection": {str(s): (float(np.median(found[s])) if found[s] else None) for s in sizes},
                "false_alerts_per_series_year": tally["alarms"] / (tally["years"] * len(syndrome_codes())),
                "false_alerts_per_year": tally["alarms"] / tally["years"] * districts,
                "points_with_a_false_alert_per_district_year": tally["alert_points"] / tally["years"],
            }
    return results, example


def run(*, seeds: int = 5, days: int = 364, sizes: tuple[int, ...] = (20, 40, 80),
        progress: Callable[[], None] | None = None) -> dict:
    """Sensitivity, days to detection and false alerts per year for C1, C2 and C3, counting with the
    complaint text and on the coded complaint alone; the JSON report. ``progress`` is called once per
    seed and way of counting."""
    started = time.perf_counter()
    start_day = days - 42  # six weeks before the end: baseline behind it, weeks after it
    district = next(p.district for p in DEFAULT_CLINICS if p.name in NEIGHBOURS)
    results, examples = {}, {}
    for name, text in (("with_text", True), ("complaint_only", False)):
        results[name], example = _evaluate(seeds, days, sizes, start_day, district, text, progress)
        examples[name] = {"district": district, "syndrome": SIGNAL[0] if text else SIGNAL[1],
                          "counts": [] if example is None else example.tolist()}
    return {
        "benchmark": "surveillance",
        "inputs": {"seeds": seeds, "days": days, "start": SERIES_START.isoformat(), "wave_sizes": list(sizes),
                   "wave_days": Outbreak().days, "wave_start_day": start_day, "wave_clinics": list(NEIGHBOURS),
                   "wave_district": district, "signal": list(SIGNAL), "baseline": BASELINE, "min_sigma": MIN_SIGMA,
                   "series": 2 * len(syndrome_codes()), "default_wave_size": Outbreak().visits,
                   "wave_first_day": (SERIES_START + timedelta(days=start_day)).isoformat()},
        "results": results,
        "examples": examples,
        "seconds": round(time.perf_counter() - started, 1),
        "environment": environment(),
    }


def plot(report: dict, path: Path) -> None:
    """The default wave in its district's series with each detector's alarms (with the complaint text);
    sensitivity by wave size (daily and weekly); false alerts per series-year, both ways of counting."""
    fig, axes = subplots(1, 3, figsize=(15, 4.2))
    inputs, example = report["inputs"], report["examples"]["with_text"]
    counts = np.asarray(example["counts"])
    if counts.size:
        days = np.arange(counts.size)
        axes[0].plot(days, counts, color="0.3", lw=0.8, label=f"{example['syndrome']} per day")
        for k, method in enumerate(METHODS):
            flags = earsc(counts, method=method, baseline=inputs["baseline"], min_sigma=inputs["min_sigma"]).alarm
            axes[0].scatter(days[flags], counts[flags] + 0.8 * (k + 1), s=12, label=f"{method} alarm")
        start = inputs["wave_start_day"]
        axes[0].axvspan(start, start + inputs["wave_days"] - 1, color="tab:red", alpha=0.12, label="wave")
        axes[0].set(title=f"{example['district']}, seed 0, with text", xlabel="day", ylabel="visits")
        axes[0].legend(fontsize=7)
    sizes = inputs["wave_sizes"]
    for method in METHODS:
        for interval, style in (("day", "-o"), ("week", "--s")):
            sens = report["results"]["with_text"][interval][method]["sensitivity"]
            axes[1].plot(sizes, [sens[str(s)] for s in sizes], style, label=f"{method} {interval}")
    axes[1].set(title="sensitivity (with text)", xlabel="extra visits per clinic over the wave",
                ylabel="share of seeds", ylim=(0, 1.05))
    axes[1].legend(fontsize=7)
    width, bars = 0.2, [(w, i) for w in ("with_text", "complaint_only") for i in ("day", "week")]
    for k, (way, interval) in enumerate(bars):
        values = [report["results"][way][interval][m]["false_alerts_per_series_year"] for m in METHODS]
        axes[2].bar(np.arange(len(METHODS)) + k * width, values, width, label=f"{way}, {interval}")
    axes[2].set_xticks(np.arange(len(METHODS)) + 1.5 * width, METHODS)
    axes[2].set(title="false alerts per series-year (no wave)", ylabel="alerts")
    axes[2].legend(fontsize=7)
    save_figure(fig, path)


SUMMARY_COLUMNS = ("counting", "series", "detector", "sensitivity (default wave)", "median days to detection",
                   "false alerts / series-year", "false alerts / year (all series)")


def summary_rows(report: dict) -> list[tuple[str, ...]]:
    """The report's table, one row per way of counting, interval and detector (``SUMMARY_COLUMNS``)."""
    size = str(report["inputs"]["default_wave_size"])
    rows = []
    for way, by_interval in report["results"].items():
        for interval, by_method in by_interval.items():
            for method, figures in by_method.items():
                days = figures["median_days_to_detection"].get(size)
                rows.append((way.replace("_", " "), f"{interval}ly".replace("dayly", "daily"), method,
                             f"{figures['sensitivity'].get(size, float('nan')):.0%}",
                             "–" if days is None else f"{days:g}", f"{figures['false_alerts_per_series_year']:.2f}",
                             f"{figures['false_alerts_per_year']:.1f}"))
    return rows
