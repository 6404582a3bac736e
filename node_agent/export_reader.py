"""Read a clinic export into DuckDB as text, exactly as the clinic wrote it.

The export lands in temp table ``raw``: ``_row`` (1-based record number after any header) and one
VARCHAR column per column of the file. What the reader refuses to do, and why:

- expand a file name: DuckDB reads ``[``, ``*``, ``?`` in a path as a glob, so the export is linked
  (or copied) to a fixed name in the ingest's own temp folder and read from there;
- guess a header, a comment marker or rows to skip: DuckDB's sniffer would take ``#`` as a comment
  and drop those records; the header row is read as a record and named here;
- parse leniently: DuckDB's ``strict_mode=false`` reads ``"x"y`` as ``x``, so strict RFC 4180 stays on.
  Quoted newlines need the single-threaded reader (``parallel=false``) with ``null_padding``;
- lose a record unseen: Python's own CSV parser counts the records, and the counts must agree.
"""

from __future__ import annotations

import codecs
import csv
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from node_agent.errors import IngestError
from node_agent.mapping import FileFormat
from node_agent.store import quote_ident, sql_text

__all__ = ["ExportTable", "likely_separator", "read_export"]

DUCKDB_ENCODINGS = {"utf-8": "utf-8", "iso8859-1": "latin-1", "utf-16": "utf-16"}
SEPARATORS = [",", ";", "\t", "|"]
# DuckDB appends advice about its own options and the failing SQL; the cause comes before them.
_BOILERPLATE = re.compile(r"^(Possible (Solution|fixes)|LINE \d+:|\s+file = |The search space used was)")
_LINE_LIMIT = 300


@dataclass
class ExportTable:
    """The columns of temp table ``raw`` as the file names them, and what did not fit that naming."""

    columns: list[str]
    header_cells: list[str] = field(default_factory=list)  # the first line's cells (header or not)
    extra: list[str] = field(default_factory=list)  # fields beyond the header's width, in ``raw``
    duplicated: list[str] = field(default_factory=list)  # header names given to more than one column


def duckdb_reason(exc: Exception, source: Path, path: Path) -> str:
    """DuckDB's message without its advice and SQL echo, naming the real file, not our temp copy."""
    kept = []
    for line in str(exc).strip().splitlines():
        if _BOILERPLATE.match(line):
            break
        if line.strip():
            line = line.replace(str(source), str(path)).strip()
            kept.append(line if len(line) <= _LINE_LIMIT else line[:_LINE_LIMIT] + "…")
    return " ".join(kept) or type(exc).__name__


def likely_separator(first_line: str, current: str) -> str | None:
    """The separator a one-column file's first line seems to use instead of ``current``."""
    counts = {sep: first_line.count(sep) for sep in SEPARATORS if sep != current}
    best = max(counts, key=lambda s: counts[s])
    return best if counts[best] else None


def _fixed_name_copy(path: Path, workdir: Path, name: str) -> Path:
    """``path`` under a glob-free name: a hard link where the file system allows it, else a copy."""
    target = workdir / name
    try:
        os.link(path, target)
    except OSError:
        shutil.copyfile(path, target)
    return target


def _to_utf8(path: Path, encoding: str, workdir: Path) -> Path:
    """Transcode an export DuckDB's reader cannot decode itself (GBK, GB18030, ...)."""
    target = workdir / "export.utf8.csv"
    try:
        with codecs.open(str(path), "r", encoding=encoding) as src, target.open("w", encoding="utf-8") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path} is not valid {encoding} text: {exc}") from exc
    return target


def _count_records(source: Path, encoding: str, separator: str) -> int | None:
    """Records in the file by Python's RFC 4180 parser (blank lines are not records); None if it fails."""
    python_encoding = "utf-8-sig" if encoding == "utf-8" else encoding
    try:
        with source.open(encoding=python_encoding, errors="replace", newline="") as fh:
            return sum(1 for record in csv.reader(fh, delimiter=separator, quotechar='"', doublequote=True) if record)
    except csv.Error:
        return None  # e.g. a field over Python's size limit: DuckDB's own reading then stands alone


def _line_end_hint(source: Path) -> str:
    """DuckDB's strict reader refuses lines ending in both ``\\r\\n`` and ``\\n``; its message does not say so."""
    with source.open("rb") as fh:
        head = fh.read(1 << 20)
    crlf = head.count(b"\r\n")
    if crlf and head.count(b"\n") > crlf:
        return " (its lines end in both \\r\\n and \\n: save it again with one kind of line ending)"
    return ""


def _header_names(cells: list[str | None]) -> tuple[list[str], list[str]]:
    """Column names from the header's cells: trimmed, unique (DuckDB folds case), blanks named."""
    width = max((i + 1 for i, c in enumerate(cells) if c is not None and c.strip()), default=0)
    names, seen, duplicated = [], set(), []
    for i, cell in enumerate(cells[:width]):
        name = (cell or "").strip() or f"column{i + 1}"
        if name.lower() in seen:
            duplicated.append(name)
            name = f"{name}#{i + 1}"
        seen.add(name.lower())
        names.append(name)
    return names, duplicated


def _read_csv(con: duckdb.DuckDBPyConnection, path: Path, fmt: FileFormat, workdir: Path) -> Path:
    encoding = DUCKDB_ENCODINGS.get(fmt.encoding)
    if encoding is None:
        source, encoding = _to_utf8(path, fmt.encoding, workdir), "utf-8"
    else:
        source = _fixed_name_copy(path, workdir, "export.csv")
    options = ", ".join([
        "all_varchar=true", "header=false", f"delim={sql_text(fmt.separator)}", "quote='\"'", "escape='\"'",
        "comment=''", "null_padding=true", "parallel=false", f"encoding={sql_text(encoding)}",
    ])
    try:
        # The reader is single-threaded (parallel=false), so ordinality is the record's place in the file.
        con.execute(f"CREATE TEMP TABLE raw_in AS SELECT * EXCLUDE (ordinality), ordinality AS _pos "
                    f"FROM read_csv({sql_text(str(source))}, {options}) WITH ORDINALITY")
    except duckdb.Error as exc:
        reason = duckdb_reason(exc, source, path) + _line_end_hint(source)
        raise IngestError(f"cannot read {path}: {reason}") from exc
    read = con.execute("SELECT count(*) FROM raw_in").fetchone()[0]
    counted = _count_records(source, encoding, fmt.separator)
    if counted is not None and counted != read:
        raise IngestError(
            f"cannot read {path} safely: DuckDB's CSV reader found {read} records where Python's finds "
            f"{counted}; check the file's quoting and line endings")
    return source


def read_export(con: duckdb.DuckDBPyConnection, path: Path, fmt: FileFormat, workdir: Path) -> ExportTable:
    """Load the export into temp table ``raw`` (all text, ``_row`` 1-based) and say how it is named.

    Raises
    ------
    IngestError
        If DuckDB cannot read the file, or reads a different number of records than Python does.
    """
    offset = 0
    if path.suffix.lower() in (".parquet", ".pq"):
        source = _fixed_name_copy(path, workdir, "export.parquet")
        try:
            con.execute(f"CREATE TEMP TABLE raw_in AS SELECT * EXCLUDE (file_row_number), file_row_number + 1 AS _pos "
                        f"FROM read_parquet({sql_text(str(source))}, file_row_number=true)")
        except duckdb.Error as exc:
            raise IngestError(f"cannot read {path}: {duckdb_reason(exc, source, path)}") from exc
        file_columns = [r[0] for r in con.execute("DESCRIBE raw_in").fetchall()][:-1]
        table = ExportTable(columns=file_columns, header_cells=file_columns)
    else:
        _read_csv(con, path, fmt, workdir)
        file_columns = [r[0] for r in con.execute("DESCRIBE raw_in").fetchall()][:-1]
        first = con.execute("SELECT * EXCLUDE (_pos) FROM raw_in WHERE _pos = 1").fetchone()
        cells = [] if first is None else list(first)
        if fmt.header:
            names, duplicated = _header_names(cells)
            offset = 1
        else:
            names, duplicated = list(fmt.columns or [])[: len(file_columns)], []
        table = ExportTable(columns=names, header_cells=[c or "" for c in cells], duplicated=duplicated)
        table.extra = [f"(extra field {i + 1})" for i in range(len(names), len(file_columns))]
    named = [*table.columns, *table.extra]
    casts = ", ".join(f"CAST({quote_ident(src)} AS VARCHAR) AS {quote_ident(dst)}"
                      for src, dst in zip(file_columns, named))
    con.execute(
        f"CREATE TEMP TABLE raw AS SELECT _pos - {offset} AS _row{', ' + casts if casts else ''} "
        f"FROM raw_in WHERE _pos > {offset} ORDER BY _pos"
    )
    return table
