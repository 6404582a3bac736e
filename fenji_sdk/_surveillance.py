"""Syndromic surveillance from a notebook: run it at the sites, read the series and the ranked alerts as
DataFrames, plot a series with its alarms (``Client.surveillance``; the API's ``/surveillance``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import pandas as pd

__all__ = ["SurveillanceMixin", "SurveillanceRun"]

SERIES_COLUMNS = ["level", "unit", "district", "interval", "period", "syndrome", "count", "suppressed", "visits"]


@dataclass
class SurveillanceRun:
    """An answered surveillance run: ``result`` as the coordinator stored it (``report``), read as frames."""

    id: int
    task: str
    query: dict[str, Any]
    result: dict[str, Any]

    @property
    def method(self) -> str:
        """The detector the commission's alerts are ranked by (C2 unless the coordinator says otherwise)."""
        return str(self.result.get("method", "C2"))

    def series(self, interval: str = "day") -> pd.DataFrame:
        """One row per series (a district's sum, or a clinic's published series), period and syndrome, with a
        boolean column per detector (``C1``, ``C2``, ``C3``: did it alarm there) and the upper bound of
        the default one (``upperbound``); ``suppressed`` > 0 marks counts some site left out."""
        rows = []
        for block in self.result["series"]:
            if block["interval"] != interval:
                continue
            for code, data in block["syndromes"].items():
                alarms = {m: set(d["alarms"]) for m, d in data["detectors"].items()}
                bound = data["detectors"].get(self.method, {}).get("upperbound")
                for i, period in enumerate(block["periods"]):
                    visits = block["visits"][i] if block["visits"] is not None else None
                    rows.append({"level": block["level"], "unit": block["unit"], "district": block["district"],
                                 "interval": interval, "period": period, "syndrome": code,
                                 "count": data["counts"][i], "suppressed": data["suppressed"][i], "visits": visits,
                                 **{m: i in hits for m, hits in alarms.items()},
                                 "upperbound": None if bound is None else bound[i]})
        return pd.DataFrame(rows, columns=None if rows else SERIES_COLUMNS)

    def alerts(self, method: str | None = None, interval: str | None = None) -> pd.DataFrame:
        """The ranked alerts of one detector (the default one unless named), worst first; both intervals
        unless one is named."""
        method = method or self.method
        keep = [a for a in self.result["alerts"] if a["method"] == method and interval in (None, a["interval"])]
        frame = pd.DataFrame(keep, columns=["method", "interval", "level", "unit", "district", "syndrome", "period",
                                            "observed", "upperbound", "severity", "sites"])
        return frame.sort_values("severity", ascending=False, na_position="first", kind="stable").reset_index(drop=True)

    def plot(self, unit: str, syndrome: str, *, interval: str = "day", method: str | None = None, ax=None):
        """One series with its upper bound and the alarms of ``method``; returns the matplotlib Axes."""
        import matplotlib.pyplot as plt

        method = method or self.method
        frame = self.series(interval)
        frame = frame[(frame["unit"] == unit) & (frame["syndrome"] == syndrome)]
        if frame.empty:
            raise ValueError(f"no {interval} series of {syndrome!r} for {unit!r}")
        x = pd.to_datetime(frame["period"] + ("-1" if interval == "week" else ""), format="%G-W%V-%u"
                           if interval == "week" else "%Y-%m-%d")
        ax = ax or plt.subplots(figsize=(9, 3))[1]
        ax.plot(x, frame["count"], color="0.25", lw=1, label=syndrome)
        if frame["upperbound"].notna().any():
            ax.plot(x, frame["upperbound"].astype(float), color="tab:orange", lw=0.8, ls="--", label=f"{method} bound")
        hits = frame[frame[method]] if method in frame else frame.iloc[0:0]
        ax.scatter(pd.to_datetime(hits["period"] + ("-1" if interval == "week" else ""),
                                  format="%G-W%V-%u" if interval == "week" else "%Y-%m-%d"),
                   hits["count"], color="tab:red", zorder=3, label=f"{method} alarm")
        ax.set(title=f"{unit}: {syndrome} per {interval}", ylabel="visits")
        ax.legend(fontsize=8)
        return ax


class SurveillanceMixin:
    """The ``Client``'s surveillance calls (``self._call`` is the client's one HTTP request)."""

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:  # pragma: no cover - the Client's
        raise NotImplementedError

    def _wait_for(self, record: dict[str, Any], fetch: Any, **how: Any) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError  # the Client's

    def submit_surveillance(self, task: str, start: date | str, end: date | str, *,
                            syndromes: list[str] | None = None) -> dict[str, Any]:
        """Queue a surveillance run of ``task``'s visits from ``start`` to ``end`` (inclusive)."""
        body = {"task": task, "start": str(start), "end": str(end), "syndromes": syndromes}
        return self._call("POST", "/surveillance", json=body)

    def surveillance_status(self, run_id: int) -> dict[str, Any]:
        return self._call("GET", f"/surveillance/{run_id}")

    def surveillance_runs(self, *, limit: int = 20) -> pd.DataFrame:
        """The latest surveillance runs, newest first."""
        keep = ["id", "task", "status", "submitted_by", "submitted_at", "finished_at", "reason"]
        rows = [{k: r[k] for k in keep} | {"start": r["query"]["start"], "end": r["query"]["end"]}
                for r in self._call("GET", "/surveillance", params={"limit": limit})]
        return pd.DataFrame(rows, columns=[*keep, "start", "end"])

    def surveillance(self, task: str, start: date | str, end: date | str, *, syndromes: list[str] | None = None,
                     poll: float = 1.0, timeout: float | None = None) -> SurveillanceRun:
        """Run surveillance at the sites and wait for it: each district's daily and weekly syndrome counts,
        the clinics' own series where they publish one, EARS on every series and the alerts ranked.

        Raises
        ------
        Invalid
            An unknown syndrome, or a window longer than 53 weeks.
        JobFailed
            No district could be summed and no clinic published a series (the reason names the sites).
        """
        record = self._wait_for(self.submit_surveillance(task, start, end, syndromes=syndromes),
                                self.surveillance_status, what="surveillance run", poll=poll, timeout=timeout)
        return SurveillanceRun(record["id"], record["task"], record["query"], record["result"])
