"""Paths a clinic's operator names on the command line: checked before anything is created or
deleted, and a site store's DuckDB errors turned into one readable ``SiteDataError``."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from models.errors import FenjiError, first_line
from node_agent.errors import SiteDataError
from node_agent.store import DB_NAME

__all__ = ["input_file", "no_file_above", "removed_if_new", "site_folder", "store_errors"]


def input_file(path: Path, what: str, error: type[FenjiError]) -> Path:
    """``path`` if it is a readable file; else ``error`` saying what is wrong with it."""
    if not path.exists():
        raise error(f"{what} not found: {path}")
    if path.is_dir():
        raise error(f"{what} {path} is a folder, not a file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise error(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    return path


def site_folder(path: Path, error: type[FenjiError], *, must_exist: bool = False) -> Path:
    """``path`` if it is a folder (or, unless ``must_exist``, nothing yet); else ``error``."""
    if path.exists() and not path.is_dir():
        raise error(f"the site folder {path} is a file, not a folder")
    if must_exist and not path.is_dir():
        raise error(f"no site folder {path}")
    no_file_above(path, f"the site folder {path}", error)
    return path


def no_file_above(path: Path, what: str, error: type[FenjiError]) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise error(f"cannot create {what}: {parent} is a file, not a folder")
            return


@contextlib.contextmanager
def store_errors(site_dir: Path) -> Iterator[None]:
    """DuckDB errors that escape a site store (a corrupt or truncated ``site.duckdb``) as ``SiteDataError``."""
    import duckdb

    try:
        yield
    except duckdb.Error as exc:
        reason = first_line(exc)
        raise SiteDataError(f"the site store {site_dir / DB_NAME} cannot be used (corrupt or truncated?): "
                            f"{reason}") from exc


@contextlib.contextmanager
def removed_if_new(folder: Path) -> Iterator[None]:
    """Remove ``folder`` again if this block created it and then failed: a failed first ingest must
    not leave behind an empty site that a federation would count."""
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not existed and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        raise
