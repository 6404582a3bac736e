"""Mapping files: how one clinic's export becomes the columns and values of a task.

A mapping YAML may hold::

    format:                      # how to read the file
      separator: ";"             # default ","
      decimal: ","               # decimal mark, default "."
      encoding: gbk              # any Python codec, default utf-8
      header: true               # false: give the names in `columns`
      columns: [age, sex, ...]   # names for a file without a header row
    rename: {Alter: age}         # source column -> task column
    values:                      # per task column: source value -> task value
      sex: {"0": F, "1": M}
    missing: ["?", "NA", ""]     # markers of a missing value in every column
    missing_by_column: {chol: ["0"]}
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.errors import MappingError
from models.yamlfile import load_yaml_model

__all__ = ["FileFormat", "Mapping", "builtin_mappings", "load_mapping"]

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


class Mapping(BaseModel):
    """How to read one export and map it onto a task's columns and values."""

    model_config = ConfigDict(extra="forbid")

    format: FileFormat = Field(default_factory=FileFormat)
    rename: dict[str, str] = Field(default_factory=dict)
    values: dict[str, dict[str, str]] = Field(default_factory=dict)
    missing: list[str] = Field(default_factory=lambda: ["", "NA", "N/A", "null", "NULL"])
    missing_by_column: dict[str, list[str]] = Field(default_factory=dict)

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
