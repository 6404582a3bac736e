"""Doctors' decisions and later outcomes, kept in the clinic's own ``site.duckdb``.

The file is opened for each write and closed right after: local training opens it read-only from
another process, which DuckDB allows only while no process holds it open for writing. If training
holds it, a write waits up to ``busy_timeout`` seconds and then answers 503 (``StoreBusy``).
Decisions with an outcome are labelled first visits for future training (``labelled_rows``;
``node_agent.outcome_rows`` ingests them as training rows); ``pending`` lists those still waiting for
one, ``quality`` reviews them against their outcomes (``node_agent.quality``).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from models.assessment import ModelRef
from node_agent.errors import IngestError
from node_agent.outcome_rows import labelled_rows
from node_agent.quality import QualityReview, review
from node_agent.serve.errors import NotFound, StoreBusy
from node_agent.serve.inputs import DecisionBase, OutcomeBase
from node_agent.serve.schemas import DecisionPublic, OutcomePublic
from node_agent.store import SiteStore

__all__ = ["DecisionLog"]

_TABLES = """
CREATE TABLE IF NOT EXISTS decisions (
    decision_id VARCHAR PRIMARY KEY, encounter_id VARCHAR NOT NULL, decided_at TIMESTAMP NOT NULL,
    recorded_by VARCHAR NOT NULL, task VARCHAR NOT NULL, inputs VARCHAR NOT NULL, models VARCHAR NOT NULL,
    referral_risk DOUBLE NOT NULL, recommended_tier VARCHAR NOT NULL, triage_level VARCHAR NOT NULL,
    decision VARCHAR NOT NULL CHECK (decision IN ('treat_here', 'refer')),
    referred_tier VARCHAR CHECK (referred_tier IN ('county', 'tertiary')), note VARCHAR,
    CHECK ((decision = 'refer') = (referred_tier IS NOT NULL)));
CREATE TABLE IF NOT EXISTS outcomes (
    outcome_id VARCHAR PRIMARY KEY, decision_id VARCHAR NOT NULL, recorded_at TIMESTAMP NOT NULL,
    recorded_by VARCHAR NOT NULL, labels VARCHAR NOT NULL, note VARCHAR);
"""


def _now() -> datetime:
    """Naive UTC, as the TIMESTAMP columns keep it (an aware value would be shifted by DuckDB's time zone)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class DecisionLog:
    """The ``decisions`` and ``outcomes`` tables of one site."""

    def __init__(self, site_dir: Path | str, *, task: str, busy_timeout: float = 5.0) -> None:
        self.site_dir, self.task, self.busy_timeout = Path(site_dir), task, busy_timeout
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline, pause = time.monotonic() + self.busy_timeout, 0.05
        with self._lock:
            while True:
                try:
                    store = SiteStore(self.site_dir)
                    break
                except IngestError as exc:
                    if time.monotonic() > deadline:
                        raise StoreBusy("the site's DuckDB file is in use (local training?); try again shortly"
                                        ) from exc
                    time.sleep(pause)
                    pause = min(pause * 2, 0.5)
            try:
                store.connection.execute(_TABLES)
                yield store.connection
            except duckdb.Error as exc:
                raise StoreBusy(f"the site store refused the write: {exc}") from exc
            finally:
                store.close()

    def record_decision(self, decision: DecisionBase, *, recorded_by: str) -> DecisionPublic:
        inputs: dict[str, Any] = decision.inputs.model_dump()  # type: ignore[attr-defined]
        summary, now = decision.assessment, _now()
        row = DecisionPublic(
            decision_id=uuid.uuid4().hex, encounter_id=decision.encounter_id, decided_at=now,
            recorded_by=recorded_by, inputs=inputs, models=summary.models, referral_risk=summary.referral_risk,
            recommended_tier=summary.tier, triage_level=summary.triage_level, decision=decision.decision,
            referred_tier=decision.referred_tier, note=decision.note)
        with self._connection() as con:
            con.execute(
                "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [row.decision_id, row.encounter_id, now, row.recorded_by, self.task,
                 json.dumps(inputs, ensure_ascii=False),
                 json.dumps({k: _ref_json(v) for k, v in row.models.items()}, ensure_ascii=False),
                 row.referral_risk, row.recommended_tier, row.triage_level, row.decision, row.referred_tier,
                 row.note])
        return row

    def record_outcome(self, outcome: OutcomeBase, *, recorded_by: str) -> OutcomePublic:
        now = _now()
        row = OutcomePublic(outcome_id=uuid.uuid4().hex, decision_id=outcome.decision_id, recorded_at=now,
                            recorded_by=recorded_by, labels=outcome.labels(), note=outcome.note)
        with self._connection() as con:
            if not con.execute("SELECT count(*) FROM decisions WHERE decision_id = ?", [row.decision_id]).fetchone()[0]:
                raise NotFound(f"no decision with id {row.decision_id!r} at this site")
            con.execute("INSERT INTO outcomes VALUES (?, ?, ?, ?, ?, ?)",
                        [row.outcome_id, row.decision_id, now, row.recorded_by,
                         json.dumps(row.labels, ensure_ascii=False), row.note])
        return row

    def decisions(self, *, limit: int = 100, encounter_id: str | None = None,
                  pending: bool = False) -> list[DecisionPublic]:
        """The latest decisions first, each with its outcomes; with ``pending``, only those without one."""
        conditions, params = [], []
        if encounter_id:
            conditions.append("encounter_id = ?")
            params.append(encounter_id)
        if pending:
            conditions.append("decision_id NOT IN (SELECT decision_id FROM outcomes)")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        with self._connection() as con:
            rows = _dicts(con.execute(f"SELECT * FROM decisions {where} ORDER BY decided_at DESC LIMIT ?",
                                      [*params, limit]))
            outcomes = _dicts(con.execute("SELECT * FROM outcomes WHERE list_contains(?, decision_id) "
                                          "ORDER BY recorded_at", [[r["decision_id"] for r in rows]]))
        by_decision: dict[str, list[OutcomePublic]] = {}
        for o in outcomes:
            by_decision.setdefault(o["decision_id"], []).append(
                OutcomePublic(**{**o, "labels": json.loads(o["labels"])}))
        return [DecisionPublic(**{**r, "inputs": json.loads(r["inputs"]), "models": json.loads(r["models"]),
                                  "outcomes": by_decision.get(r["decision_id"], [])}) for r in rows]

    def labelled_rows(self) -> pd.DataFrame:
        """One row per decision with an outcome: its first-visit inputs and its labels (a later outcome
        overrides an earlier one label by label)."""
        with self._connection() as con:
            return labelled_rows(con)

    def quality(self, *, since: datetime | None = None) -> QualityReview:
        """The decision-quality review of this clinic, in full (for its site admin)."""
        with self._connection() as con:
            return review(con, since=since)


def _ref_json(ref: ModelRef) -> dict[str, Any]:
    """A model reference as stored with a decision; a global model's has no personalisation fields."""
    return ref.model_dump() if ref.personalised else ref.model_dump(include={"name", "version", "card_url"})


def _dicts(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]
