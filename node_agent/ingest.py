"""Ingest a clinic export into the site's DuckDB: every row accepted or quarantined, never lost.

All validation is set-based SQL over DuckDB's own CSV/Parquet readers; no row-by-row Python.
"""

from __future__ import annotations

import codecs
import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from models.errors import IngestError
from models.spec import FeatureKind, TaskSpec
from node_agent.mapping import Mapping
from node_agent.store import SiteStore, quote_ident, sql_text

__all__ = ["IngestSummary", "ingest_file"]

DUCKDB_ENCODINGS = {"utf-8": "utf-8", "iso8859-1": "latin-1", "utf-16": "utf-16"}
FILE_KEY_LENGTH = 16
TRUE_WORDS = ("1", "1.0", "true", "t", "yes", "y")
FALSE_WORDS = ("0", "0.0", "false", "f", "no", "n")


@dataclass
class IngestSummary:
    """What one ingest did: rows read, accepted, quarantined, and why."""

    file: str
    task: str
    rows_read: int = 0
    accepted: int = 0
    quarantined: int = 0
    already_ingested: bool = False
    absent_columns: list[str] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    ingest_id: int | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _to_utf8(path: Path, encoding: str, workdir: Path) -> Path:
    """Transcode an export DuckDB's reader cannot decode itself (GBK, GB18030, ...)."""
    target = workdir / (path.name + ".utf8")
    try:
        with codecs.open(path, "r", encoding=encoding) as src, target.open("w", encoding="utf-8") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path} is not valid {encoding} text: {exc}") from exc
    return target


def _read_raw(con: duckdb.DuckDBPyConnection, path: Path, mapping: Mapping, workdir: Path) -> list[str]:
    """Load the export as all-text columns into temp table ``raw`` with a 1-based ``_row``."""
    fmt = mapping.format
    if path.suffix.lower() in (".parquet", ".pq"):
        reader = f"read_parquet({sql_text(str(path))})"
    else:
        source, encoding = path, DUCKDB_ENCODINGS.get(fmt.encoding)
        if encoding is None:
            source, encoding = _to_utf8(path, fmt.encoding, workdir), "utf-8"
        options = [
            "all_varchar=true",
            f"delim={sql_text(fmt.separator)}",
            f"header={'true' if fmt.header else 'false'}",
            f"encoding={sql_text(encoding)}",
            "null_padding=true",
        ]
        if fmt.columns:
            names = ", ".join(sql_text(c) for c in fmt.columns)
            options.append(f"names=[{names}]")
        reader = f"read_csv({sql_text(str(source))}, {', '.join(options)})"
    try:
        con.execute(f"CREATE TEMP TABLE raw_in AS SELECT * FROM {reader}")
    except duckdb.Error as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise IngestError(f"cannot read {path}: {first_line}") from exc
    columns = [r[0] for r in con.execute("DESCRIBE raw_in").fetchall()]
    casts = ", ".join(f"CAST({quote_ident(c)} AS VARCHAR) AS {quote_ident(c)}" for c in columns)
    con.execute(
        f"CREATE TEMP TABLE raw AS SELECT row_number() OVER () AS _row, {casts} FROM raw_in"
    )
    return columns


def _cleaned(mapping: Mapping, target: str, columns: list[str]) -> str | None:
    """SQL text of a column after trimming, missing markers and value mapping (None if absent)."""
    source = mapping.source_column(target)
    if source not in columns:
        return None
    text = f"trim({quote_ident(source)})"
    markers = ", ".join(sql_text(m) for m in mapping.missing_markers(target)) or "NULL"
    whens = " ".join(
        f"WHEN {text} = {sql_text(a)} THEN {sql_text(b)}"
        for a, b in mapping.values.get(target, {}).items()
    )
    return f"CASE WHEN {text} IS NULL OR {text} IN ({markers}) THEN NULL {whens} ELSE {text} END"


def _range_text(feat_min: float | None, feat_max: float | None, unit: str | None) -> str:
    lo = "" if feat_min is None else f"{feat_min:g}"
    hi = "" if feat_max is None else f"{feat_max:g}"
    return f" is outside the valid range {lo}..{hi}{' ' + unit if unit else ''}"


def _typed_and_checks(spec: TaskSpec, mapping: Mapping) -> tuple[list[str], list[str]]:
    """SQL for each typed column of the accepted table, and for each per-row reason (or NULL)."""
    typed: list[str] = []
    checks: list[str] = []
    for feat in spec.features:
        col, name = quote_ident(feat.name), feat.name
        if feat.kind is FeatureKind.NUMERIC:
            text = f"replace({col}, ',', '.')" if mapping.format.decimal == "," else col
            value = f"TRY_CAST({text} AS DOUBLE)"
            typed.append(f"{value} AS {col}")
            checks.append(
                f"CASE WHEN {col} IS NOT NULL AND ({value} IS NULL OR NOT isfinite({value})) "
                f"THEN {sql_text(name + ': ')} || {col} || ' is not a number' END"
            )
            out_of_range = []
            if feat.min is not None:
                out_of_range.append(f"{value} < {feat.min}")
            if feat.max is not None:
                out_of_range.append(f"{value} > {feat.max}")
            if out_of_range:
                checks.append(
                    f"CASE WHEN {' OR '.join(out_of_range)} THEN {sql_text(name + ': ')} || {col} "
                    f"|| {sql_text(_range_text(feat.min, feat.max, feat.unit))} END"
                )
        elif feat.kind is FeatureKind.CATEGORICAL:
            allowed = ", ".join(sql_text(v) for v in feat.values or [])
            typed.append(f"CASE WHEN {col} IN ({allowed}) THEN {col} END AS {col}")
            checks.append(
                f"CASE WHEN {col} IS NOT NULL AND {col} NOT IN ({allowed}) THEN "
                f"{sql_text(name + ': unknown category ')} || {col} "
                f"|| {sql_text(' (allowed: ' + ', '.join(feat.values or []) + ')')} END"
            )
        else:
            yes = ", ".join(sql_text(w) for w in TRUE_WORDS)
            no = ", ".join(sql_text(w) for w in FALSE_WORDS)
            typed.append(
                f"CASE WHEN lower({col}) IN ({yes}) THEN true WHEN lower({col}) IN ({no}) THEN false "
                f"END AS {col}"
            )
            checks.append(
                f"CASE WHEN {col} IS NOT NULL AND lower({col}) NOT IN ({yes}, {no}) THEN "
                f"{sql_text(name + ': ')} || {col} || ' is not a yes/no value' END"
            )
        if feat.required:
            checks.append(f"CASE WHEN {col} IS NULL THEN {sql_text('missing required field ' + name)} END")
    label = quote_ident(spec.label.name)
    classes = ", ".join(sql_text(c) for c in spec.label.classes)
    typed.append(f"{label} AS {label}")
    checks.append(f"CASE WHEN {label} IS NULL THEN {sql_text('missing label ' + spec.label.name)} END")
    checks.append(
        f"CASE WHEN {label} IS NOT NULL AND {label} NOT IN ({classes}) THEN "
        f"{sql_text(spec.label.name + ': unknown class ')} || {label} "
        f"|| {sql_text(' (classes: ' + ', '.join(spec.label.classes) + ')')} END"
    )
    return typed, checks


def ingest_file(store: SiteStore, spec: TaskSpec, path: Path, mapping: Mapping) -> IngestSummary:
    """Load one export into the site's store for ``spec``.

    Every row read ends up either in the task's accepted table or in ``quarantine`` with its row
    number and a readable reason; ingesting the same file with the same mapping again adds nothing.

    Raises
    ------
    IngestError
        If the file does not exist or cannot be read as a table at all.
    """
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"input file not found: {path}")
    summary = IngestSummary(file=str(path), task=spec.name)
    file_sha = _sha256(path)
    mapping_sha = hashlib.sha256(mapping.model_dump_json().encode()).hexdigest()
    con = store.connection
    store.ensure_task_table(spec)
    if store.already_ingested(spec.name, file_sha, mapping_sha):
        summary.already_ingested = True
        return summary

    with tempfile.TemporaryDirectory(prefix="fenji-ingest-") as workdir:
        con.execute("BEGIN TRANSACTION")
        try:
            _load(con, store, spec, path, mapping, summary, Path(workdir), file_sha)
            store.log_ingest(summary, file_sha, mapping_sha)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            for table in ("raw_in", "raw", "mapped", "staged"):
                con.execute(f"DROP TABLE IF EXISTS temp.{table}")
    return summary


def _load(
    con: duckdb.DuckDBPyConnection,
    store: SiteStore,
    spec: TaskSpec,
    path: Path,
    mapping: Mapping,
    summary: IngestSummary,
    workdir: Path,
    file_sha: str,
) -> None:
    columns = _read_raw(con, path, mapping, workdir)
    targets = [*spec.feature_names, spec.label.name]
    select = []
    for target in targets:
        expr = _cleaned(mapping, target, columns)
        if expr is None:
            summary.absent_columns.append(target)
            expr = "CAST(NULL AS VARCHAR)"
        select.append(f"{expr} AS {quote_ident(target)}")
    used = {mapping.source_column(t) for t in targets}
    if spec.record_id:
        used.add(mapping.source_column(spec.record_id))
        rid = _cleaned(mapping, spec.record_id, columns)
        if rid is None:
            summary.absent_columns.append(spec.record_id)
            rid = "CAST(NULL AS VARCHAR)"
    else:
        # Without an id column a record is its file and row: the same file never counts twice.
        rid = f"{sql_text(file_sha[:FILE_KEY_LENGTH])} || ':' || CAST(_row AS VARCHAR)"
    summary.ignored_columns = [c for c in columns if c not in used]
    con.execute(
        f"CREATE TEMP TABLE mapped AS SELECT _row, {rid} AS _record_id, {', '.join(select)} FROM raw"
    )

    typed, checks = _typed_and_checks(spec, mapping)
    table = store.table_name(spec)
    checks += [
        "CASE WHEN _record_id IS NULL THEN 'missing record id' END",
        "CASE WHEN _record_id IS NOT NULL AND _dup_rank > 1 THEN 'duplicate record id ' "
        "|| _record_id || ' (first seen at row ' || CAST(_dup_first AS VARCHAR) || ')' END",
        f"CASE WHEN _record_id IN (SELECT record_id FROM {table}) THEN 'duplicate record id ' "
        "|| _record_id || ' (already in the site store)' END",
    ]
    reasons = f"array_to_string(list_filter([{', '.join(checks)}], lambda x: x IS NOT NULL), '; ')"
    con.execute(
        f"CREATE TEMP TABLE staged AS SELECT _row, _record_id, {', '.join(typed)}, {reasons} AS _reason "
        "FROM (SELECT *, row_number() OVER (PARTITION BY _record_id ORDER BY _row) AS _dup_rank, "
        "min(_row) OVER (PARTITION BY _record_id) AS _dup_first FROM mapped)"
    )
    ingest_id = store.next_ingest_id()
    summary.ingest_id = ingest_id
    feature_cols = ", ".join(quote_ident(c) for c in targets)
    con.execute(
        f"INSERT INTO {table} (record_id, {feature_cols}, _ingest_id, _row) "
        f"SELECT _record_id, {feature_cols}, {ingest_id}, _row FROM staged WHERE _reason = '' ORDER BY _row"
    )
    con.execute(
        "INSERT INTO quarantine (ingest_id, task, source_file, row_number, record_id, reason, raw) "
        f"SELECT {ingest_id}, {sql_text(spec.name)}, {sql_text(str(path))}, s._row, s._record_id, "
        "s._reason, CAST(to_json(r) AS VARCHAR) FROM staged s JOIN raw r ON r._row = s._row "
        "WHERE s._reason <> '' ORDER BY s._row"
    )
    summary.rows_read = con.execute("SELECT count(*) FROM raw").fetchone()[0]
    summary.accepted = con.execute("SELECT count(*) FROM staged WHERE _reason = ''").fetchone()[0]
    summary.quarantined = summary.rows_read - summary.accepted
    # Group reasons by their kind ("age: 900 is outside..." -> "age: … is outside...").
    reason_rows = con.execute(
        r"SELECT regexp_replace(regexp_replace(part, '^([^:]+): .* is ', '\1: … is '), "
        r"'(category|class|record id) [^ ]+ ', '\1 … ') AS kind, count(*) AS n "
        "FROM (SELECT unnest(string_split(_reason, '; ')) AS part FROM staged WHERE _reason <> '') "
        "GROUP BY kind ORDER BY n DESC, kind"
    ).fetchall()
    summary.reasons = {kind: n for kind, n in reason_rows}


def summary_file_key(path: Path) -> str:
    """Stable key of a file's content, used as the record id prefix when a task has no id column."""
    return _sha256(path)[:FILE_KEY_LENGTH]
