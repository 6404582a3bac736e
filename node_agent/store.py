"""The site's own DuckDB file: accepted records per task, quarantine, and the ingest log.

Nothing in this module sends anything anywhere; it is the only place that reads patient rows.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd

from models.spec import FeatureKind, TaskSpec
from node_agent.errors import IngestError, SiteDataError

__all__ = ["OUTCOME_ID_PREFIX", "VISIT_DATE", "SiteStore", "quote_ident", "sql_text"]

DB_NAME = "site.duckdb"
# The day of each visit (from an export's ``visit_date`` column), kept beside the task's columns: no
# model reads it; syndromic surveillance counts by it (node_agent.surveillance).
VISIT_DATE = "_visit_date"
OUTCOME_ID_PREFIX = "outcome:"  # record ids of rows made from doctors' decisions and outcomes (outcome_rows)
SQL_TYPES = {FeatureKind.NUMERIC: "DOUBLE", FeatureKind.CATEGORICAL: "VARCHAR", FeatureKind.BOOLEAN: "BOOLEAN",
             FeatureKind.TEXT: "VARCHAR"}


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class SiteStore:
    """One clinic's DuckDB file, under ``site_dir/site.duckdb``."""

    def __init__(self, site_dir: Path | str, *, read_only: bool = False) -> None:
        self.site_dir = Path(site_dir)
        self.path = self.site_dir / DB_NAME
        if read_only and not self.path.exists():
            raise SiteDataError(f"no site store at {self.path}: run `fenji node ingest` first")
        self.site_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.connection = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as exc:
            raise IngestError(f"cannot open the site store {self.path}: {exc}") from exc
        if not read_only:
            self._create_metadata()

    @property
    def site_id(self) -> str:
        return self.site_dir.name

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> SiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_metadata(self) -> None:
        self.connection.execute(
            """
            CREATE TABLE IF NOT EXISTS ingest_log (
                ingest_id INTEGER PRIMARY KEY, task VARCHAR, source_file VARCHAR,
                file_sha256 VARCHAR, mapping_sha256 VARCHAR, rows_read BIGINT,
                accepted BIGINT, quarantined BIGINT, ingested_at TIMESTAMP);
            CREATE TABLE IF NOT EXISTS quarantine (
                ingest_id INTEGER, task VARCHAR, source_file VARCHAR, row_number BIGINT,
                record_id VARCHAR, reason VARCHAR, raw VARCHAR);
            """
        )

    @staticmethod
    def table_name(spec: TaskSpec) -> str:
        return quote_ident(f"task_{spec.name}")

    def ensure_task_table(self, spec: TaskSpec) -> None:
        columns = ", ".join(f"{quote_ident(f.name)} {SQL_TYPES[f.kind]}" for f in spec.features)
        self.connection.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table_name(spec)} (record_id VARCHAR PRIMARY KEY, "
            f"{columns}, {quote_ident(spec.label.name)} VARCHAR, _ingest_id INTEGER, _row BIGINT, {VISIT_DATE} DATE)"
        )
        # A store made before visits had a day gets the column, empty for the rows it holds.
        self.connection.execute(f"ALTER TABLE {self.table_name(spec)} ADD COLUMN IF NOT EXISTS {VISIT_DATE} DATE")

    def has_visit_dates(self, spec: TaskSpec) -> bool:
        """Whether the task's table has the visit-day column (a store ingested before it may not)."""
        row = self.connection.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = ? AND column_name = ?",
            [f"task_{spec.name}", VISIT_DATE]).fetchone()
        return bool(row and row[0])

    def already_ingested(self, task: str, file_sha: str, mapping_sha: str) -> bool:
        row = self.connection.execute(
            "SELECT count(*) FROM ingest_log WHERE task = ? AND file_sha256 = ? AND mapping_sha256 = ?",
            [task, file_sha, mapping_sha],
        ).fetchone()
        return bool(row and row[0])

    def next_ingest_id(self) -> int:
        return int(self.connection.execute("SELECT coalesce(max(ingest_id), 0) + 1 FROM ingest_log").fetchone()[0])

    def log_ingest(self, *, ingest_id: int, task: str, source_file: str, file_sha: str, mapping_sha: str,
                   rows_read: int, accepted: int, quarantined: int) -> None:
        self.connection.execute(
            "INSERT INTO ingest_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [ingest_id, task, source_file, file_sha, mapping_sha, rows_read, accepted, quarantined,
             datetime.now(timezone.utc).replace(tzinfo=None)],
        )

    def _has_table(self, name: str) -> bool:
        row = self.connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
        ).fetchone()
        return bool(row and row[0])

    def has_task(self, spec: TaskSpec) -> bool:
        return self._has_table(f"task_{spec.name}")

    def set_split(self, spec: TaskSpec, assignment: pd.DataFrame) -> None:
        """Fix the train/test split: ``assignment`` has ``record_id`` and ``split`` (train/test/other)."""
        table = quote_ident(f"split_{spec.name}")
        frame = assignment[["record_id", "split"]].astype(str)  # noqa: F841 - read by DuckDB by name
        self.connection.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT record_id, split FROM frame")

    def count(self, spec: TaskSpec) -> int:
        if not self.has_task(spec):
            return 0
        return int(self.connection.execute(f"SELECT count(*) FROM {self.table_name(spec)}").fetchone()[0])

    def summary(self, task: str | None = None) -> pd.DataFrame:
        """Per task and source (each export file, or the doctors' decisions with outcomes): ingests,
        rows read, accepted and quarantined, from the ingest log."""
        where, params = ("WHERE task = ?", [task]) if task else ("", [])
        return self.connection.execute(
            f"SELECT task, source_file AS source, count(*) AS ingests, sum(rows_read) AS rows_read, "
            f"sum(accepted) AS accepted, sum(quarantined) AS quarantined FROM ingest_log {where} "
            "GROUP BY task, source_file ORDER BY task, min(ingest_id)", params).df()

    def record_rows(self, spec: TaskSpec, ingest_id: int) -> pd.DataFrame:
        """``record_id`` and ``row`` (the record's number in its file) of the records one ingest added."""
        return self.connection.execute(
            f"SELECT record_id, _row AS row FROM {self.table_name(spec)} WHERE _ingest_id = ? ORDER BY _row",
            [ingest_id],
        ).df()

    def quarantine(self, task: str | None = None) -> pd.DataFrame:
        where, params = ("WHERE task = ?", [task]) if task else ("", [])
        return self.connection.execute(
            f"SELECT * FROM quarantine {where} ORDER BY ingest_id, row_number", params
        ).df()

    def load(self, spec: TaskSpec, *, split: str | None = None, test_fraction: float = 0.25) -> pd.DataFrame:
        """Accepted records of a task, optionally only the ``train`` or ``test`` split.

        By default the split is a stable hash of the record id, so a record stays on its side as data
        grows. A site may fix its own split instead (``set_split``), e.g. a published benchmark's; rows
        made later from the doctors' outcomes (``OUTCOME_ID_PREFIX``), which the fixed split cannot name,
        are training rows there.
        """
        if not self.has_task(spec):
            raise SiteDataError(f"site {self.site_id!r} has no data for task {spec.name!r}")
        cols = ", ".join(quote_ident(c) for c in [*spec.feature_names, spec.label.name])
        cut = int(round(test_fraction * 10_000))
        where = ""
        if split is not None and self._has_table(f"split_{spec.name}"):
            fixed = quote_ident("split_" + spec.name)
            where = f"WHERE record_id IN (SELECT record_id FROM {fixed} WHERE split = {sql_text(split)})"
            if split == "train":
                # Outcome rows train and never test: the fixed test rows stay the ones the site chose
                # (a benchmark's), and the next round learns from what the clinic's doctors recorded.
                where += (f" OR (starts_with(record_id, {sql_text(OUTCOME_ID_PREFIX)}) "
                          f"AND record_id NOT IN (SELECT record_id FROM {fixed}))")
        elif split == "test":
            where = f"WHERE hash(record_id) % 10000 < {cut}"
        elif split == "train":
            where = f"WHERE hash(record_id) % 10000 >= {cut}"
        return self.connection.execute(
            f"SELECT record_id, {cols} FROM {self.table_name(spec)} {where} ORDER BY _ingest_id, _row"
        ).df()
