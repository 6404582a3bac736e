"""``Client``: the coordinator's API (``/api/v1``) for a data scientist, in a notebook or a script.

Every call is one HTTP request through ``httpx``; a refusal raises the ``fenji_sdk.errors`` class of its
status with the server's message. ``transport`` is httpx's seam: a test may pass ``httpx.MockTransport``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pandas as pd

from fenji_sdk._queries import FINISHED, QueriesMixin, QueryResult
from fenji_sdk._surveillance import SurveillanceMixin
from fenji_sdk.errors import JobFailed, WaitTimeout, error_of
from fenji_sdk.progress import ProgressLine

__all__ = ["Client", "QueryResult"]


class Client(QueriesMixin, SurveillanceMixin):
    """The coordinator at ``url`` (e.g. ``http://127.0.0.1:8500``), called with an account's ``token``.

    Parameters
    ----------
    url
        The coordinator's base URL (without ``/api/v1``).
    token
        The account's bearer token (``fenji coordinator account add``).
    timeout
        Seconds for one request.
    transport
        An httpx transport instead of the network (tests).
    """

    def __init__(self, url: str, token: str, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=f"{self.url}/api/v1", headers={"Authorization": f"Bearer {token}"},
                                  timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            from fenji_sdk.errors import SdkError

            raise SdkError(f"cannot reach the coordinator at {self.url}: {exc}") from exc
        if response.is_error:
            raise error_of(response)
        return response.json()

    # --- who, and the models ---------------------------------------------------------------------
    def me(self) -> dict[str, Any]:
        return self._call("GET", "/me")

    def tasks(self) -> list[str]:
        """The tasks with registered models."""
        return list(self._call("GET", "/models")["tasks"])

    def versions(self, task: str) -> pd.DataFrame:
        """One row per version and site: the metrics that site released for that version."""
        rows = [{"version": v["version"], "site": site, "aliases": ",".join(v["aliases"]), **metrics}
                for v in self._call("GET", f"/models/{task}/versions") for site, metrics in v["sites"].items()]
        return pd.DataFrame(rows, columns=None if rows else ["version", "site", "aliases"])

    def rounds(self, task: str, version: str | int) -> pd.DataFrame:
        """One row per training round, one column per metric (the federated model after that round)."""
        body = self._call("GET", f"/models/{task}/versions/{version}/rounds")
        frame = pd.DataFrame([{"round": p["round"], "metric": metric, "value": p["value"]}
                              for metric, points in body["rounds"].items() for p in points],
                             columns=["round", "metric", "value"])
        return frame.pivot(index="round", columns="metric", values="value") if len(frame) else frame

    # --- sites -----------------------------------------------------------------------------------
    def sites(self) -> pd.DataFrame:
        """One row per site: when it was enrolled and last seen, and its latest report (rows and quarantine
        rate as bucket edges, runs accepted and refused, privacy budget; ``quality_*`` columns only for a
        role that sees the decision-quality review). Empty cells: not reported, or withheld."""
        rows = []
        for site in self._call("GET", "/sites"):
            report = site["report"] or {}
            row = {"site": site["site"], "enrolled_at": site["enrolled_at"], "last_seen": site["last_seen"],
                   "last_job": site["last_job"], "task": report.get("task")}
            for name in ("rows", "quarantine_rate"):
                bucket = report.get(name) or {}
                row |= {f"{name}_low": bucket.get("low"), f"{name}_high": bucket.get("high")}
            row |= {k: report.get(k) for k in ("plans_approved", "runs_accepted", "runs_refused")}
            budget = report.get("budget") or {}
            row |= {f"budget_{k}": budget.get(k) for k in ("spent", "left", "total", "period_days")}
            row |= {f"quality_{k}": v for k, v in (report.get("quality") or {}).items()}
            row |= {"audit_head": site["audit_head"], "withheld": ",".join(site["withheld"])}
            rows.append(row)
        return pd.DataFrame(rows, columns=None if rows else ["site", "enrolled_at", "last_seen"])

    # --- training jobs ---------------------------------------------------------------------------
    def submit_training(self, task: str, rounds: int, *, dp_epsilon: float | None = None,
                        personalisation: bool = True) -> dict[str, Any]:
        """Queue a training job; returns it (its ``id`` is what ``wait`` and ``cancel`` take)."""
        return self._call("POST", "/jobs", json={"task": task, "rounds": rounds, "dp_epsilon": dp_epsilon,
                                                 "personalisation": personalisation})

    def job(self, job_id: int) -> dict[str, Any]:
        return self._call("GET", f"/jobs/{job_id}")

    def jobs(self, *, limit: int = 100) -> pd.DataFrame:
        keep = ["id", "task", "rounds", "status", "rounds_done", "submitted_by", "submitted_at", "finished_at"]
        return pd.DataFrame(self._call("GET", "/jobs", params={"limit": limit}), columns=keep)

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel a queued job now, or a running one after its current round."""
        return self._call("POST", f"/jobs/{job_id}/cancel")

    def wait(self, job_id: int, *, progress: bool = True, poll: float = 1.0, timeout: float | None = None
             ) -> dict[str, Any]:
        """Follow a job until it ends (a progress line with ``progress``); returns it if it succeeded or
        was cancelled.

        Raises
        ------
        JobFailed
            If it failed (the server's reason, and the sites that refused or failed).
        WaitTimeout
            If ``timeout`` seconds passed first (the job goes on).
        """
        line = ProgressLine(f"job {job_id}") if progress else None
        show = None if line is None else (lambda job: line.update(job["rounds_done"], job["rounds"], job["status"]))
        try:
            return self._wait_for(self.job(job_id), self.job, what="job", poll=poll, timeout=timeout, on_update=show,
                                  cancelled_is_an_end=True)
        finally:
            if line is not None:
                line.close()

    @staticmethod
    def _wait_for(record: dict[str, Any], fetch: Callable[[int], dict[str, Any]], *, what: str, poll: float,
                  timeout: float | None, on_update: Callable[[dict[str, Any]], None] | None = None,
                  cancelled_is_an_end: bool = False) -> dict[str, Any]:
        """Follow ``record`` (a job, query or surveillance run, as submitted or first fetched) with
        ``fetch(id)`` every ``poll`` s until it ends, showing each state to ``on_update``; return it.
        The one poll loop of ``wait``, ``query`` and ``surveillance``, so they time out and fail alike.

        Raises
        ------
        WaitTimeout
            If ``timeout`` seconds passed first (what was waited for goes on).
        JobFailed
            If it failed (the server's reason; a job's names the sites that refused or failed), or was
            cancelled and that is no end for this caller (a query's, a surveillance run's: a result was
            waited for).
        """
        name = f"{what} {record['id']}"
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            if on_update is not None:
                on_update(record)
            if record["status"] in FINISHED:
                break
            if end is not None and time.monotonic() > end:
                raise WaitTimeout(f"{name} is still {record['status']} after {timeout:g} s")
            time.sleep(poll)
            record = fetch(record["id"])
        if record["status"] == "failed":
            sites = ", ".join(f"{s['site']} ({s['reason']})" for s in record.get("failed_sites", []))
            raise JobFailed(f"{name} failed: {record['reason']}" + (f"; sites: {sites}" if sites else ""),
                            record=record)
        if record["status"] == "cancelled" and not cancelled_is_an_end:
            raise JobFailed(f"{name} was cancelled: {record['reason']}", record=record)
        return record

    # --- governance ------------------------------------------------------------------------------
    def promotions(self) -> pd.DataFrame:
        """Promotions and rollbacks, newest first: one row each, with who approved and why."""
        keep = ["id", "kind", "task", "version", "status", "created_at", "applied_at", "previous_version"]
        rows = [{k: p[k] for k in keep} | {"approved_by": ", ".join(a["account"] for a in p["approvals"]),
                                           "reasons": " | ".join(a["reason"] for a in p["approvals"])}
                for p in self._call("GET", "/promotions")]
        return pd.DataFrame(rows, columns=[*keep, "approved_by", "reasons"])

    def verify_audit(self) -> dict[str, Any]:
        """Whether the coordinator's audit chain is intact and how far the key holder countersigned it
        (every role; reading the entries themselves is for commissioners and coordinator admins)."""
        return self._call("GET", "/audit/verify")

    # --- audit -----------------------------------------------------------------------------------
    def audit(self, *, after: int = 0, limit: int = 100) -> pd.DataFrame:
        """The audit trail (commissioners and coordinator admins): one row per entry."""
        page = self._call("GET", "/audit", params={"after": after, "limit": limit})
        return pd.DataFrame([{"seq": e["seq"], "at": e["at"], "actor": e["actor"], "action": e["action"],
                              **e["details"]} for e in page["entries"]])
