"""Mapping files: how one clinic's export becomes the columns and values of a task.

A mapping YAML may hold::

    format:                      # how to read the file
      separator: ";"             # default ","
      decimal: ","               # decimal mark, default "."
      encoding: gbk              # any Python codec, default utf-8
      header: true               # false: the file has no header row; name its columns in `columns`
      columns: [age, sex, ...]   # the names of a header-less file's columns, in file order
    rename: {Alter: age}         # source column -> task column
    values:                      # per task column: source value -> task value
      sex: {"0": F, "1": M}
    missing: ["?", "NA", ""]     # markers of a missing value in every column
    missing_by_column: {chol: ["0"]}
    record_id:                   # how to identify a record when the task's id column is not there
      columns: [dept, visit_no]  # ... joined with `separator` (default ":") into one id
    # or: record_id: {content_hash: true}   the id is a hash of the record's values (see ingest.py)

With ``header: true`` (the default) the first line must name the task's label, its required
features and (unless ``record_id`` says otherwise) its record id column, after ``rename``;
otherwise the ingest stops and says what it expected. ``header: false`` needs ``columns``.
"""

from __future__ import annotations

import codecs
import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.yamlfile import load_yaml_model
from node_agent.errors import MappingError

__all__ = ["FileFormat", "Mapping", "RecordIdRule", "builtin_mappings", "load_mapping"]

MAPPINGS_DIR = Path(__file__).parent / "mappings"


class FileFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    separator: str = ","
    decimal: str = "."
    encoding: str = "utf-8"
    header: bool = True
    columns: list[str] | None = None

    @field_validator("separator")
    @classmethod
    def _one_char_separator(cls, v: str) -> str:
        v = "\t" if v in ("\\t", "tab") else v
        if len(v) != 1:
            raise ValueError(f"separator must be one character, got {v!r}")
        return v

    @field_validator("decimal")
    @classmethod
    def _decimal_mark(cls, v: str) -> str:
        if v not in (".", ","):
            raise ValueError(f"decimal mark must be '.' or ',', got {v!r}")
        return v

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            return codecs.lookup(v).name
        except LookupError as exc:
            raise ValueError(f"unknown text encoding {v!r}") from exc

    @model_validator(mode="after")
    def _headerless_needs_names(self) -> FileFormat:
        if not self.header and not self.columns:
            raise ValueError("a file without a header row (header: false) needs its column names in `columns`")
        if self.columns and len(set(self.columns)) != len(self.columns):
            raise ValueError("the names in `columns` must be distinct")
        return self


class RecordIdRule(BaseModel):
    """How to identify a record when the export has no single id column for the task."""

    model_config = ConfigDict(extra="forbid")

    columns: list[str] | None = None
    separator: str = ":"
    content_hash: bool = False

    @model_validator(mode="after")
    def _one_rule(self) -> RecordIdRule:
        if bool(self.columns) == self.content_hash:
            raise ValueError("record_id takes either `columns: [...]` or `content_hash: true`")
        return self


class Mapping(BaseModel):
    """How to read one export and map it onto a task's columns and values."""

    model_config = ConfigDict(extra="forbid")

    format: FileFormat = Field(default_factory=FileFormat)
    rename: dict[str, str] = Field(default_factory=dict)
    values: dict[str, dict[str, str]] = Field(default_factory=dict)
    missing: list[str] = Field(default_factory=lambda: ["", "NA", "N/A", "null", "NULL"])
    missing_by_column: dict[str, list[str]] = Field(default_factory=dict)
    # Last, and left out of `digest` when unset, so mappings written before it keep their digest.
    record_id: RecordIdRule | None = None

    @field_validator("values", mode="before")
    @classmethod
    def _values_as_text(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(col): {str(a): str(b) for a, b in (m or {}).items()} for col, m in v.items()}
        return v

    @field_validator("missing", mode="before")
    @classmethod
    def _missing_as_text(cls, v: Any) -> Any:
        return [str(x) for x in v] if isinstance(v, list) else v

    @field_validator("missing_by_column", mode="before")
    @classmethod
    def _missing_by_column_as_text(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): [str(x) for x in xs] for k, xs in v.items()}
        return v

    def source_column(self, target: str) -> str:
        """The column of the export that feeds task column ``target``."""
        for src, dst in self.rename.items():
            if dst == target:
                return src
        return target

    def missing_markers(self, target: str) -> list[str]:
        return [*self.missing, *self.missing_by_column.get(target, [])]

    def digest(self) -> str:
        """SHA-256 of the mapping's settings: the ingest log's key, with the file's own hash."""
        exclude = {"record_id"} if self.record_id is None else None
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()


def builtin_mappings() -> list[str]:
    return sorted(p.stem for p in MAPPINGS_DIR.glob("*.yaml"))


def load_mapping(mapping: str | Path | None) -> Mapping:
    """Load a mapping by path or built-in name; ``None`` gives the identity mapping.

    Raises
    ------
    MappingError
        If the file is missing, not YAML, or not a valid mapping.
    """
    if mapping is None:
        return Mapping()
    path = Path(mapping)
    if not path.exists() and not path.suffix and (MAPPINGS_DIR / f"{mapping}.yaml").exists():
        path = MAPPINGS_DIR / f"{mapping}.yaml"
    return load_yaml_model(path, Mapping, MappingError, "mapping")
