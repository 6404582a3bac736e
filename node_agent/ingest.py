"""Ingest a clinic export into the site's DuckDB: every row accepted, quarantined with a reason, or
recognised as already stored; none lost, none changed silently.

All validation is set-based SQL over the export as text (``node_agent/export_reader.py``); no
row-by-row Python. Numbers must be written as plain decimal numbers: DuckDB's cast alone would read
``1_0`` as 10 and ``0x1A`` as 26.

Record ids
----------
A record's id comes from the mapping's ``record_id`` rule (``columns: [...]`` joined by its separator,
or ``content_hash: true``), else from the task's ``record_id`` column, else from a content hash.

A content-hash id is 16 hex digits of the SHA-256 of the record's task values after mapping (numbers
as numbers, so ``54`` and ``54.0`` agree) and ``#n`` for the n-th identical record in the file.
Re-ingesting a longer export of the same clinic thus recognises the records already stored and adds
only the new ones, and two identical patients in one export are both kept. The trade-offs:

- the id is the values: a record corrected in a later export is a new record and the old version
  stays, since nothing says they are the same visit;
- exports are taken to be cumulative: in a file of new visits only, a record identical to one stored
  earlier (same values, same occurrence number) is taken as already stored, not added;
- columns the task does not read do not count: visits differing only there are identical;
- changing a task's features changes every content-hash id.

An export with a real id column should keep using it. A row whose id is already stored with the same
values is counted as already stored; with other values it is quarantined.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from models.spec import FeatureKind, TaskSpec
from node_agent.errors import IngestError
from node_agent.export_reader import ExportTable, likely_separator, read_export
from node_agent.mapping import Mapping
from node_agent.store import VISIT_DATE, SiteStore, quote_ident, sql_text
from node_agent.visit_day import VISIT_DATE_COLUMN, visit_date_sql

__all__ = ["IngestSummary", "ingest_file"]

HASH_LENGTH = 16
TRUE_WORDS = ("1", "1.0", "true", "t", "yes", "y")
FALSE_WORDS = ("0", "0.0", "false", "f", "no", "n")
# A plain decimal number, optionally with an exponent; no '_', hex, 'inf'/'nan' or grouping marks.
NUMBER = {".": r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?",
          ",": r"[+-]?([0-9]+(,[0-9]*)?|,[0-9]+)([eE][+-]?[0-9]+)?"}
_SHOWN_COLUMNS = 12
MAX_TEXT = 2000  # characters of a free-text cell


@dataclass
class IngestSummary:
    """What one ingest did: rows read, accepted, quarantined (and why), already stored.

    ``rows_read == accepted + quarantined + already_stored``. ``absent_columns`` are task columns
    the file does not have; ``empty_columns`` those it has but left empty on every row: both are
    never recorded at this site.
    """

    file: str
    task: str
    rows_read: int = 0
    accepted: int = 0
    quarantined: int = 0
    already_stored: int = 0
    already_ingested: bool = False
    absent_columns: list[str] = field(default_factory=list)
    empty_columns: list[str] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    ingest_id: int | None = None
    undated: int = 0  # accepted visits without a readable day (node_agent.visit_day)

    @property
    def never_recorded(self) -> list[str]:
        return [*self.absent_columns, *self.empty_columns]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _text(source: str, markers: list[str]) -> str:
    """SQL of a trimmed cell, NULL where it holds a missing-value marker."""
    text = f"trim({quote_ident(source)})"
    listed = ", ".join(sql_text(m) for m in markers) or "NULL"
    return f"CASE WHEN {text} IN ({listed}) THEN NULL ELSE {text} END"


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


def _id_sources(spec: TaskSpec, mapping: Mapping, columns: list[str]) -> list[str] | None:
    """The export columns a record id is read from; None when the id is a content hash."""
    rule = mapping.record_id
    if rule is not None and rule.columns:
        return [c if c in columns else mapping.source_column(c) for c in rule.columns]
    if rule is None and spec.record_id:
        return [mapping.source_column(spec.record_id)]
    return None


def _record_id_sql(spec: TaskSpec, mapping: Mapping, columns: list[str]) -> str:
    sources = _id_sources(spec, mapping, columns)
    if sources is None:
        return "CAST(NULL AS VARCHAR)"
    if mapping.record_id is None:
        return _cleaned(mapping, spec.record_id or "", columns) or "CAST(NULL AS VARCHAR)"
    separator = sql_text(mapping.record_id.separator)
    return f" || {separator} || ".join(_text(s, mapping.missing) for s in sources)


def _range_text(feat_min: float | None, feat_max: float | None, unit: str | None) -> str:
    lo = "" if feat_min is None else f"{feat_min:g}"
    hi = "" if feat_max is None else f"{feat_max:g}"
    return f" is outside the valid range {lo}..{hi}{' ' + unit if unit else ''}"


def _typed_and_checks(spec: TaskSpec, mapping: Mapping) -> tuple[list[str], list[str], list[str]]:
    """SQL per typed column of the accepted table, per row reason (or NULL), and per hashed value."""
    typed: list[str] = []
    checks: list[str] = []
    hashed: list[str] = []
    for feat in spec.features:
        col, name = quote_ident(feat.name), feat.name
        if feat.kind is FeatureKind.NUMERIC:
            decimal = mapping.format.decimal
            text = f"replace({col}, ',', '.')" if decimal == "," else col
            plain = f"regexp_full_match({col}, {sql_text(NUMBER[decimal])})"
            value = f"(CASE WHEN {plain} THEN TRY_CAST({text} AS DOUBLE) END)"
            typed.append(f"{value} AS {col}")
            # printf's %.17g, not DuckDB's own float formatting, so ids outlive a DuckDB upgrade.
            hashed.append(f"coalesce(printf('%.17g', {value}), {col})")
            hint = "" if decimal == "." else " (decimal mark ',')"
            checks.append(
                f"CASE WHEN {col} IS NOT NULL AND ({value} IS NULL OR NOT isfinite({value})) "
                f"THEN {sql_text(name + ': ')} || {col} || {sql_text(' is not a number' + hint)} END"
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
            hashed.append(col)
            checks.append(
                f"CASE WHEN {col} IS NOT NULL AND {col} NOT IN ({allowed}) THEN "
                f"{sql_text(name + ': unknown category ')} || {col} "
                f"|| {sql_text(' (allowed: ' + ', '.join(feat.values or []) + ')')} END"
            )
        elif feat.kind is FeatureKind.TEXT:
            # Free text is kept as written (models/text.py normalises it when encoding); only its
            # length is checked, so a pasted letter cannot bloat the store.
            typed.append(f"{col} AS {col}")
            hashed.append(col)
            checks.append(f"CASE WHEN length({col}) > {MAX_TEXT} THEN {sql_text(name + ': text longer than ')} "
                          f"|| {sql_text(str(MAX_TEXT))} || ' characters' END")
        else:
            yes = ", ".join(sql_text(w) for w in TRUE_WORDS)
            no = ", ".join(sql_text(w) for w in FALSE_WORDS)
            value = f"(CASE WHEN lower({col}) IN ({yes}) THEN true WHEN lower({col}) IN ({no}) THEN false END)"
            typed.append(f"{value} AS {col}")
            hashed.append(f"coalesce(CAST({value} AS VARCHAR), {col})")
            checks.append(
                f"CASE WHEN {col} IS NOT NULL AND lower({col}) NOT IN ({yes}, {no}) THEN "
                f"{sql_text(name + ': ')} || {col} || ' is not a yes/no value' END"
            )
        if feat.required:
            checks.append(f"CASE WHEN {col} IS NULL THEN {sql_text('missing required field ' + name)} END")
    label = quote_ident(spec.label.name)
    classes = ", ".join(sql_text(c) for c in spec.label.classes)
    typed.append(f"{label} AS {label}")
    hashed.append(label)
    checks.append(f"CASE WHEN {label} IS NULL THEN {sql_text('missing label ' + spec.label.name)} END")
    checks.append(
        f"CASE WHEN {label} IS NOT NULL AND {label} NOT IN ({classes}) THEN "
        f"{sql_text(spec.label.name + ': unknown class ')} || {label} "
        f"|| {sql_text(' (classes: ' + ', '.join(spec.label.classes) + ')')} END"
    )
    return typed, checks, hashed


def _looks_like_a_record(cells: list[str]) -> bool:
    filled = [c.strip() for c in cells if c and c.strip()]
    numbers = [c for c in filled if any(re.fullmatch(pattern, c) for pattern in NUMBER.values())]
    return bool(filled) and 2 * len(numbers) >= len(filled)


def _check_columns(spec: TaskSpec, mapping: Mapping, table: ExportTable, path: Path) -> None:
    """Stop unless the file names the task's label, required features and record id columns."""
    columns, fmt = table.columns, mapping.format
    needed = [("label", spec.label.name), *(("required feature", f.name) for f in spec.features if f.required)]
    missing = [f"{what} {name}" + ("" if mapping.source_column(name) == name else
                                   f" (column {mapping.source_column(name)!r})")
               for what, name in needed if mapping.source_column(name) not in columns]
    id_sources = _id_sources(spec, mapping, columns) or []
    missing_ids = [s for s in id_sources if s not in columns]
    missing += [f"record id column {s!r}" for s in missing_ids]
    used = {mapping.source_column(n).lower() for _, n in needed} | {s.lower() for s in id_sources}
    twice = sorted({d for d in table.duplicated if d.lower() in used})
    if twice:
        raise IngestError(f"the header of {path} names {', '.join(map(repr, twice))} more than once: "
                          "which column holds the values is ambiguous")
    if not missing:
        return
    single = len(columns) + len(table.extra) == 1 and table.header_cells
    separator = likely_separator(table.header_cells[0], fmt.separator) if single else None
    if separator:
        raise IngestError(f"{path} reads as a single column with separator {fmt.separator!r}, but its first "
                          f"line looks separated by {separator!r}: set format.separator: {separator!r} "
                          "in the mapping")
    where = f"the first line of {path}" if fmt.header else "the mapping's format.columns"
    found = ", ".join(map(repr, columns[:_SHOWN_COLUMNS])) + (", …" if len(columns) > _SHOWN_COLUMNS else "")
    message = f"{where} names no column for the task's {', '.join(missing)} (columns found: {found or 'none'})."
    if fmt.header and _looks_like_a_record(table.header_cells):
        message += (" The first line looks like a record, not a header: for a file without a header row, "
                    "name its columns in the mapping (format: {header: false, columns: [...]}).")
    else:
        message += " Map the file's columns onto the task's with `rename` in a mapping."
    if missing_ids:
        message += (" An id can also be derived: record_id: {columns: [...]} or "
                    "record_id: {content_hash: true} in the mapping.")
    raise IngestError(message)


def ingest_file(store: SiteStore, spec: TaskSpec, path: Path, mapping: Mapping) -> IngestSummary:
    """Load one export into the site's store for ``spec``.

    Every row read ends up in the task's accepted table, in ``quarantine`` with its row number and
    a readable reason, or is counted as already stored; ingesting the same file with the same
    mapping again adds nothing.

    Raises
    ------
    IngestError
        If the file does not exist, cannot be read as a table at all, or does not name the task's
        label, required features and record id columns.
    """
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"input file not found: {path}")
    summary = IngestSummary(file=str(path), task=spec.name)
    file_sha = _sha256(path)
    mapping_sha = mapping.digest()
    con = store.connection
    store.ensure_task_table(spec)
    if store.already_ingested(spec.name, file_sha, mapping_sha):
        summary.already_ingested = True
        return summary

    with tempfile.TemporaryDirectory(prefix="fenji-ingest-") as workdir:
        con.execute("BEGIN TRANSACTION")
        try:
            _load(con, store, spec, path, mapping, summary, Path(workdir))
            store.log_ingest(ingest_id=summary.ingest_id, task=summary.task, source_file=summary.file,
                             file_sha=file_sha, mapping_sha=mapping_sha, rows_read=summary.rows_read,
                             accepted=summary.accepted, quarantined=summary.quarantined)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            for table in ("raw_in", "raw", "mapped", "checked", "staged"):
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
) -> None:
    export = read_export(con, path, mapping.format, workdir)
    if mapping.format.header and not export.header_cells:
        raise IngestError(f"{path} is empty: it has no header row")
    _check_columns(spec, mapping, export, path)
    columns = export.columns
    targets = [*spec.feature_names, spec.label.name]
    select = []
    for target in targets:
        expr = _cleaned(mapping, target, columns)
        if expr is None:
            summary.absent_columns.append(target)
            expr = "CAST(NULL AS VARCHAR)"
        select.append(f"{expr} AS {quote_ident(target)}")
    used = {mapping.source_column(t) for t in [*targets, VISIT_DATE_COLUMN]} | set(_id_sources(spec, mapping, columns) or [])
    summary.ignored_columns = [c for c in columns if c not in used]
    extra = ", ".join(quote_ident(c) for c in export.extra)
    too_wide = (f"CASE WHEN coalesce({extra}) IS NOT NULL THEN 'more fields than the {len(columns)} "
                f"columns named' END" if extra else "NULL")
    con.execute(
        f"CREATE TEMP TABLE mapped AS SELECT _row, {_record_id_sql(spec, mapping, columns)} AS _rid, "
        f"{', '.join(select)}, {too_wide} AS _too_wide, {visit_date_sql(mapping, columns)} AS {VISIT_DATE} FROM raw"
    )
    present = [t for t in targets if t not in summary.absent_columns]
    if present:
        filled = ", ".join(f"count({quote_ident(t)})" for t in present)
        counts = con.execute(f"SELECT count(*), {filled} FROM mapped").fetchone()
        summary.empty_columns = [t for t, n in zip(present, counts[1:]) if counts[0] and not n]

    typed, checks, hashed = _typed_and_checks(spec, mapping)
    checks.append("_too_wide")
    content_hash = _id_sources(spec, mapping, columns) is None
    hash_sql = f"substr(sha256(to_json([{', '.join(hashed)}])), 1, {HASH_LENGTH})" if content_hash else "NULL"
    con.execute(
        f"CREATE TEMP TABLE checked AS SELECT _row, _rid, {', '.join(typed)}, {VISIT_DATE}, {hash_sql} AS _hash, "
        f"array_to_string(list_filter([{', '.join(checks)}], lambda x: x IS NOT NULL), '; ') AS _value_reason "
        "FROM mapped"
    )
    _stage(con, store.table_name(spec), targets, content_hash)
    ingest_id = store.next_ingest_id()
    summary.ingest_id = ingest_id
    cols = ", ".join(quote_ident(c) for c in targets)
    con.execute(
        f"INSERT INTO {store.table_name(spec)} (record_id, {cols}, _ingest_id, _row, {VISIT_DATE}) SELECT _record_id, "
        f"{cols}, {ingest_id}, _row, {VISIT_DATE} FROM staged WHERE _reason = '' AND NOT _in_store ORDER BY _row"
    )
    con.execute(
        "INSERT INTO quarantine (ingest_id, task, source_file, row_number, record_id, reason, raw) "
        f"SELECT {ingest_id}, {sql_text(spec.name)}, {sql_text(str(path))}, s._row, s._record_id, "
        "s._reason, CAST(to_json(r) AS VARCHAR) FROM staged s JOIN raw r ON r._row = s._row "
        "WHERE s._reason <> '' ORDER BY s._row"
    )
    summary.rows_read, summary.accepted, summary.already_stored, summary.undated = con.execute(
        "SELECT count(*), count(*) FILTER (_reason = '' AND NOT _in_store), count(*) FILTER (_reason = '' AND "
        f"_in_store), count(*) FILTER (_reason = '' AND NOT _in_store AND {VISIT_DATE} IS NULL) FROM staged"
    ).fetchone()
    summary.quarantined = summary.rows_read - summary.accepted - summary.already_stored
    # Group reasons by their kind ("age: 900 is outside..." -> "age: … is outside...").
    reason_rows = con.execute(
        r"SELECT regexp_replace(regexp_replace(part, '^([^:]+): .* is ', '\1: … is '), "
        r"'(category|class|record id) [^ ]+ ', '\1 … ') AS kind, count(*) AS n "
        "FROM (SELECT unnest(string_split(_reason, '; ')) AS part FROM staged WHERE _reason <> '') "
        "GROUP BY kind ORDER BY n DESC, kind"
    ).fetchall()
    summary.reasons = {kind: n for kind, n in reason_rows}


def _stage(con: duckdb.DuckDBPyConnection, table: str, targets: list[str], content_hash: bool) -> None:
    """Give each checked row its record id and final reason; flag rows the store already holds."""
    record_id = ("_hash || '#' || CAST(row_number() OVER (PARTITION BY _hash ORDER BY _row) AS VARCHAR)"
                 if content_hash else "_rid")
    same = " AND ".join(f"r.{quote_ident(c)} IS NOT DISTINCT FROM t.{quote_ident(c)}" for c in targets)
    reasons = ", ".join([
        "nullif(_value_reason, '')",
        "CASE WHEN _record_id IS NULL THEN 'missing record id' END",
        "CASE WHEN _record_id IS NOT NULL AND _dup_rank > 1 THEN 'duplicate record id ' || _record_id "
        "|| ' (first seen at row ' || CAST(_dup_first AS VARCHAR) || ')' END",
        "CASE WHEN _in_store AND _dup_rank = 1 AND NOT _same THEN 'duplicate record id ' || _record_id "
        "|| ' (already in the site store with other values)' END",
    ])
    con.execute(
        f"CREATE TEMP TABLE staged AS SELECT *, array_to_string(list_filter([{reasons}], lambda x: x IS NOT NULL), "
        "'; ') AS _reason FROM ("
        f"SELECT r.*, t.record_id IS NOT NULL AS _in_store, coalesce({same}, false) AS _same FROM ("
        "SELECT *, row_number() OVER (PARTITION BY _record_id ORDER BY _row) AS _dup_rank, "
        "min(_row) OVER (PARTITION BY _record_id) AS _dup_first "
        f"FROM (SELECT *, {record_id} AS _record_id FROM checked)) r "
        f"LEFT JOIN {table} t ON t.record_id = r._record_id)"
    )
