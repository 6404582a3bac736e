"""A surveillance query's answer as the commission reads it: every series with EARS C1, C2 and C3 run on
it, and the alarms of the last days (weeks) ranked across series.

``surveillance_report`` takes a decrypted ``federation.surveillance.SurveillanceResult`` and returns a
JSON-able dict (stored with the query job, served by ``/api/v1/surveillance``, read by the SDK and
the console): the daily and weekly series of each district and of each clinic that published its
own, each syndrome's counts with each detector's alarms and upper bounds, and ``alerts`` ranked per
detector and interval (``rank_alerts``: one per series, worst first). A series with a count that
some site suppressed is not a count series: it is shown, not run (``skipped``, with the reason);
one too short for a detector's baseline likewise. ``DEFAULT_METHOD`` is C2: on the synthetic
districts it found every default wave in two days with about one false alert per series and year,
as C1 did, where C3 gave five times as many (``bench/results/surveillance.json``).
"""

from __future__ import annotations

import math
from typing import Any

from coordinator.surveillance.alerts import rank_alerts
from coordinator.surveillance.ears import METHODS, EarsResult, earsc
from coordinator.surveillance.errors import CountSeriesError
from federation.surveillance import SeriesBlock, SurveillanceResult, query_text
from models.syndromes import SYNDROMES

__all__ = ["DEFAULT_METHOD", "DETECTOR", "surveillance_report"]

DEFAULT_METHOD = "C2"
# Baseline of 7 points; sigma floored at 1 count (the series are sparse: a single case after a run of
# zeros must not alarm); alerts from the last 14 days or 2 weeks; at most 10 per detector and interval.
DETECTOR = {"baseline": 7, "min_sigma": 1.0, "window": {"day": 14, "week": 2}, "limit": 10}


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _detected(block: SeriesBlock, j: int, skipped: list[dict]) -> dict[str, EarsResult]:
    where = {"level": block.level, "unit": block.unit, "interval": block.interval, "syndrome": block.syndromes[j]}
    if (block.suppressed[:, j] > 0).any():
        skipped.append(where | {"reason": "a site suppressed some of its counts: not a count series"})
        return {}
    try:
        return {m: earsc(block.counts[:, j], method=m, baseline=DETECTOR["baseline"], min_sigma=DETECTOR["min_sigma"])
                for m in METHODS}
    except CountSeriesError as exc:
        skipped.append(where | {"reason": str(exc)})
        return {}


def surveillance_report(result: SurveillanceResult) -> dict[str, Any]:
    """The JSON-able report of one surveillance answer (see the module docstring)."""
    series, skipped, alerts, hidden = [], [], [], {}
    for interval in ("day", "week"):
        detected: dict[str, dict] = {m: {} for m in METHODS}
        for block in result.series(interval):
            syndromes = {}
            for j, code in enumerate(block.syndromes):
                runs = _detected(block, j, skipped)
                syndromes[code] = {"counts": [round(float(c)) for c in block.counts[:, j]],
                                   "suppressed": [round(float(s)) for s in block.suppressed[:, j]],
                                   "detectors": {m: {"alarms": [int(i) for i in r.alarm.nonzero()[0]],
                                                     "upperbound": [_number(u) for u in r.upperbound]}
                                                 for m, r in runs.items()}}
                for method, run in runs.items():
                    detected[method][(block.level, block.unit, block.district, code)] = (run, block)
            series.append({"level": block.level, "unit": block.unit, "district": block.district,
                           "interval": interval, "periods": block.periods, "sites": block.sites,
                           "visits": None if block.visits is None else [round(float(v)) for v in block.visits],
                           "syndromes": syndromes})
        for method, runs in detected.items():
            digest = rank_alerts({key: run for key, (run, _) in runs.items()}, window=DETECTOR["window"][interval],
                                 limit=DETECTOR["limit"])
            hidden[f"{method}/{interval}"] = digest.hidden
            for alert in digest.alerts:
                level, unit, district, code = alert.key
                block = runs[alert.key][1]
                alerts.append({"method": method, "interval": interval, "level": level, "unit": unit,
                               "district": district, "syndrome": code, "period": block.periods[alert.index],
                               "observed": alert.observed, "upperbound": _number(alert.upperbound),
                               "severity": _number(alert.severity), "sites": block.sites})
    titles = {s.code: s.title for s in SYNDROMES if s.code in result.query.syndromes}
    return {"query": result.query.model_dump(mode="json"), "query_text": query_text(result.query),
            "method": DEFAULT_METHOD, "detector": DETECTOR, "sites": result.sites, "syndrome_titles": titles,
            "districts": {d: sites for d, (_, _, sites) in result.sums.items()},
            "published": {s: r.interval for s, r in result.clinics.items()}, "unavailable": result.unavailable,
            "refused": result.refused, "excluded": [e.to_dict() for e in result.excluded],
            "series": series, "alerts": alerts, "hidden": hidden, "skipped": skipped,
            # What the query jobs' audit entries read of every answer (coordinator.service.queries).
            "dp_epsilon": 0.0, "suppressed_sites": []}
