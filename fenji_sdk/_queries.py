"""Federated statistics from a notebook: ask the sites a typed query and read the answer as a frame, list
the queries, cancel a queued one (``Client.query``; the API's ``/queries``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from federation.analytics import Count, CrossTab, Histogram, Mean

__all__ = ["QueriesMixin", "QueryResult"]

FINISHED = frozenset({"succeeded", "failed", "cancelled"})
LIST_COLUMNS = ["id", "task", "kind", "status", "submitted_by", "submitted_at", "started_at", "finished_at", "reason",
                "query"]


@dataclass
class QueryResult:
    """An answered statistics query: one record per cell (its key, its numbers, ``suppressed_sites``:
    at how many sites the cell was sent as zeros because it held fewer than k rows there)."""

    query: dict[str, Any]
    cells: list[dict[str, Any]]
    columns: list[str]
    rows: int
    sites: list[str]
    dp_epsilon: float = 0.0
    excluded: list[dict[str, Any]] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.cells, columns=self.columns)

    @property
    def suppressed(self) -> pd.DataFrame:
        """The cells suppressed at one site or more: their counts leave those sites out."""
        frame = self.to_frame()
        return frame[frame["suppressed_sites"] > 0]


class QueriesMixin:
    """The ``Client``'s statistics calls (``self._call`` is the client's one HTTP request)."""

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:  # pragma: no cover - the Client's
        raise NotImplementedError

    def _wait_for(self, record: dict[str, Any], fetch: Any, **how: Any) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError  # the Client's

    def submit_query(self, query: Count | Mean | Histogram | CrossTab, *, task: str) -> dict[str, Any]:
        return self._call("POST", "/queries", json={"task": task, "query": query.model_dump(mode="json")})

    def query_status(self, query_id: int) -> dict[str, Any]:
        return self._call("GET", f"/queries/{query_id}")

    def query(self, query: Count | Mean | Histogram | CrossTab, *, task: str, poll: float = 0.5,
              timeout: float | None = None) -> QueryResult:
        """Ask the sites ``query`` about ``task`` and wait for the answer.

        Raises
        ------
        Invalid
            If the query does not fit the task (a column it lacks).
        JobFailed
            If it failed at the sites (too few answered; the key holder refused the sum), or someone
            cancelled it before it ran (``cancel_query``).
        """
        record = self._wait_for(self.submit_query(query, task=task), self.query_status, what="query", poll=poll,
                                timeout=timeout)
        result = record["result"]
        return QueryResult(query=record["query"], cells=result["cells"], columns=result["columns"],
                           rows=result["rows"], sites=result["sites"], dp_epsilon=result["dp_epsilon"],
                           excluded=result["excluded"])

    def queries(self, *, limit: int = 100) -> pd.DataFrame:
        """The statistics queries, newest first (everyone's: ``submitted_by`` says whose), one row each with
        its kind, state and times; ``query`` is the typed query as the coordinator stored it."""
        rows = [{k: q[k] for k in LIST_COLUMNS if k != "kind"} | {"kind": q["query"].get("kind")}
                for q in self._call("GET", "/queries", params={"limit": limit})]
        return pd.DataFrame(rows, columns=LIST_COLUMNS)

    def cancel_query(self, query_id: int) -> dict[str, Any]:
        """Cancel a queued query (one of your own, unless you are a coordinator admin); returns it.

        Raises
        ------
        Conflict
            If it is already running at the sites (a running query cannot be stopped: it ends succeeded
            or failed) or has ended.
        Forbidden
            If someone else submitted it.
        """
        return self._call("POST", f"/queries/{query_id}/cancel")
