"""Doctors' decisions with recorded outcomes, turned into training rows of the site's store.

The scoring service keeps each decision (the first-visit inputs the doctor scored) and its later
outcomes (``referred_up``, ``triage_level``, ``diagnosis_group``) in the site's ``site.duckdb``
(``node_agent.serve.records``). ``ingest_outcomes`` writes the labelled ones for one task as an
export and ingests it with ``node_agent.ingest.ingest_file``: the same checks as any clinic export,
each row accepted, quarantined with its reason, or recognised as already stored, and one line in the
ingest log (source ``OUTCOME_SOURCE``). The record id is ``outcome:<decision_id>``.

It runs between federated runs, never during one: a run's row counts are fixed by its statistics
round, and the coordinator checks every later sum against them. The node does it itself as a run
starts (``ingest_pending_outcomes``, called by the ClientApp before the statistics round reads any
row, audited as ``ingest-outcomes``), so every run trains on the outcomes recorded before it; ``fenji
node ingest-outcomes`` does the same by hand. A site with a fixed split (``SiteStore.set_split``)
trains on these rows too (``SiteStore.load``). A decision whose outcome was corrected after it was
ingested is quarantined as a record id already stored with other values (the first outcome stays in
training).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from models.spec import FeatureKind, TaskSpec
from node_agent.budget import node_audit
from node_agent.errors import IngestError
from node_agent.ingest import IngestSummary, ingest_file
from node_agent.mapping import Mapping, RecordIdRule
from node_agent.store import DB_NAME, OUTCOME_ID_PREFIX, SiteStore

__all__ = ["OUTCOME_SOURCE", "OutcomeIngest", "ingest_outcomes", "ingest_pending_outcomes", "labelled_rows",
           "pending_outcomes"]

log = logging.getLogger(__name__)

OUTCOME_SOURCE = "site.duckdb:decisions+outcomes"
ID_COLUMN = "outcome_record_id"


def has_decision_tables(con: duckdb.DuckDBPyConnection) -> bool:
    found = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name IN "
                        "('decisions', 'outcomes')").fetchone()
    return bool(found and found[0] == 2)


def labelled_rows(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """One row per decision with an outcome: its first-visit inputs and its labels (a later outcome
    overrides an earlier one label by label), oldest decision first."""
    if not has_decision_tables(con):
        return pd.DataFrame()
    rows = con.execute("SELECT d.decision_id, d.encounter_id, d.inputs, o.labels FROM decisions d "
                       "JOIN outcomes o USING (decision_id) ORDER BY d.decided_at, d.decision_id, o.recorded_at"
                       ).fetchall()
    merged: dict[str, dict[str, Any]] = {}
    for decision_id, encounter_id, inputs, labels in rows:
        row = merged.setdefault(decision_id, {"decision_id": decision_id, "encounter_id": encounter_id,
                                              **json.loads(inputs)})
        row.update(json.loads(labels))
    return pd.DataFrame.from_records(list(merged.values()))


@dataclass
class OutcomeIngest:
    """What one ``ingest_outcomes`` did: the ingest's summary, and the decisions left out because
    their outcome does not (yet) give this task's label."""

    summary: IngestSummary
    without_label: int


def _cell(value: Any, kind: FeatureKind | None) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if kind is FeatureKind.BOOLEAN and isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _export(spec: TaskSpec, rows: pd.DataFrame) -> pd.DataFrame:
    """The rows as a clinic export of text cells: inputs as the API stored them, nothing coerced."""
    kinds = {f.name: f.kind for f in spec.features}
    columns = [*spec.feature_names, spec.label.name]
    ids = rows["decision_id"].astype(str) if "decision_id" in rows else pd.Series([], dtype=str)
    out = pd.DataFrame({ID_COLUMN: OUTCOME_ID_PREFIX + ids})
    for name in columns:
        values = rows[name] if name in rows else pd.Series([None] * len(rows), index=rows.index)
        out[name] = [_cell(v, kinds.get(name)) for v in values]
    return out


def ingest_outcomes(store: SiteStore, spec: TaskSpec) -> OutcomeIngest:
    """Ingest the site's decisions whose outcome gives ``spec``'s label as training rows of ``spec``.

    Running it again adds only what is new: an unchanged set is recognised as already ingested, and
    rows ingested before are counted as already stored.
    """
    rows = labelled_rows(store.connection)
    label = spec.label.name
    usable = rows[rows[label].notna()] if label in rows else rows.iloc[0:0]
    mapping = Mapping(record_id=RecordIdRule(columns=[ID_COLUMN]))
    with tempfile.TemporaryDirectory(prefix="fenji-outcomes-") as workdir:
        path = Path(workdir) / f"{spec.name}-outcomes.csv"
        _export(spec, usable).to_csv(path, index=False)
        summary = ingest_file(store, spec, path, mapping)
    if summary.ingest_id is not None:
        # The export was a temporary file: the log and the quarantine name where the rows came from.
        for table in ("ingest_log", "quarantine"):
            store.connection.execute(f"UPDATE {table} SET source_file = ? WHERE ingest_id = ?",
                                     [OUTCOME_SOURCE, summary.ingest_id])
    summary.file = OUTCOME_SOURCE
    return OutcomeIngest(summary, without_label=len(rows) - len(usable))


def pending_outcomes(store: SiteStore, spec: TaskSpec) -> int:
    """How many decisions have an outcome giving ``spec``'s label and are neither training rows of
    ``spec`` yet nor quarantined for it (a quarantined one waits for a corrected record, not a run)."""
    rows = labelled_rows(store.connection)
    label = spec.label.name
    if label not in rows:
        return 0
    ids = set(OUTCOME_ID_PREFIX + rows.loc[rows[label].notna(), "decision_id"].astype(str))
    if ids and store.has_task(spec):
        ids -= {r for (r,) in store.connection.execute(
            f"SELECT record_id FROM {store.table_name(spec)} WHERE starts_with(record_id, ?)",
            [OUTCOME_ID_PREFIX]).fetchall()}
    if ids:
        ids -= {r for (r,) in store.connection.execute(
            "SELECT record_id FROM quarantine WHERE task = ? AND source_file = ?", [spec.name, OUTCOME_SOURCE]
        ).fetchall()}
    return len(ids)


def ingest_pending_outcomes(site_dir: Path, spec: TaskSpec, *, busy_timeout: float = 5.0) -> OutcomeIngest | None:
    """As a run starts: the decisions with new outcomes become training rows of ``spec`` before the run
    reads any row (``ingest_outcomes``'s checks and quarantine), with an ``ingest-outcomes`` line in the
    node's audit log. ``None`` if nothing was pending (nothing is written then).

    The scoring service writes decisions to the same file one short write at a time; if it still
    holds the file after ``busy_timeout`` seconds, the run goes on with the rows already stored and
    the node's audit log says the outcomes wait for the next run (``ingest-outcomes-deferred``).
    """
    site_dir = Path(site_dir)
    if not (site_dir / DB_NAME).is_file():
        return None
    try:
        with SiteStore(site_dir, read_only=True) as store:  # the common case, nothing new: no write lock taken
            waiting = pending_outcomes(store, spec)
        if not waiting:
            return None
        with _writable(site_dir, busy_timeout) as store:
            done = ingest_outcomes(store, spec)
    except IngestError as exc:
        log.warning("outcome rows for %s not ingested now: %s", spec.name, exc)
        node_audit(site_dir).append(actor="node", action="ingest-outcomes-deferred", task=spec.name,
                                    reason=str(exc).splitlines()[0][:200])
        return None
    s = done.summary
    node_audit(site_dir).append(actor="node", action="ingest-outcomes", task=spec.name, source=OUTCOME_SOURCE,
                                rows_read=s.rows_read, accepted=s.accepted, quarantined=s.quarantined,
                                already_stored=s.already_stored)
    return done


def _writable(site_dir: Path, busy_timeout: float) -> SiteStore:
    """A write connection to the site store, waiting up to ``busy_timeout`` s while another process writes."""
    deadline, pause = time.monotonic() + busy_timeout, 0.05
    while True:
        try:
            return SiteStore(site_dir)
        except IngestError:
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
