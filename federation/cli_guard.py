"""The ``fenji`` command's error boundary: every failure ends in one readable line on stderr.

Known failures are ``FenjiError``s, each with its exit code (``models.errors``); an ``OSError`` that
escaped a command is reported with its path (exit 74, ``EX_IOERR``); anything else is an internal
error (exit 70, ``EX_SOFTWARE``) whose traceback ``fenji --verbose …`` shows. The checks below let a
command refuse bad paths before it creates or deletes anything.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from models.errors import FenjiError, SiteDataError

__all__ = [
    "EXIT_INTERNAL", "EXIT_IO", "FenjiGroup", "fail", "input_file", "is_verbose", "output_file", "print_error",
    "removed_if_new", "set_verbose", "site_folder", "store_errors",
]

EXIT_INTERNAL = 70
EXIT_IO = 74
_VERBOSE = "fenji.verbose"  # in click's context meta, which every sub-command's context shares

# soft_wrap: a long path must not be broken over two lines (one error, one line).
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}")


def fail(exc: FenjiError) -> NoReturn:
    """Print ``exc`` as one ``error:`` line and exit with its code."""
    print_error(str(exc))
    raise typer.Exit(exc.exit_code) from None


def set_verbose(flag: bool) -> bool:
    """Record a command's ``--verbose`` (tracebacks are then shown); return whether any level asked."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return flag
    ctx.meta[_VERBOSE] = bool(flag or ctx.meta.get(_VERBOSE))
    return ctx.meta[_VERBOSE]


def is_verbose(ctx: click.Context) -> bool:
    return bool(ctx.meta.get(_VERBOSE))


class FenjiGroup(TyperGroup):
    """The root group: turns whatever a sub-command raises into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise  # typer.Exit, usage errors and Ctrl-C already end the way click means them to
        except FenjiError as exc:
            if is_verbose(ctx):
                raise
            fail(exc)
        except OSError as exc:
            if is_verbose(ctx):
                raise
            where = f": {exc.filename}" if exc.filename else ""
            print_error(f"{exc.strerror or exc}{where}")
            raise typer.Exit(EXIT_IO) from None
        except Exception as exc:
            if is_verbose(ctx):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            err_console.print(f"[bold red]internal error:[/] {escape(type(exc).__name__)}"
                              f"{': ' + escape(first) if first else ''} "
                              "(run with --verbose for the traceback: fenji --verbose …)")
            raise typer.Exit(EXIT_INTERNAL) from None


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
    _no_file_above(path, f"the site folder {path}", error)
    return path


def _no_file_above(path: Path, what: str, error: type[FenjiError]) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise error(f"cannot create {what}: {parent} is a file, not a folder")
            return


def output_file(path: Path, what: str) -> Path:
    """``path`` if a file can be written there (checked before a long run, not after it)."""
    if path.is_dir():
        raise FenjiError(f"the {what} {path} is a folder: give a file name")
    _no_file_above(path, f"the {what} {path}", FenjiError)
    return path


@contextlib.contextmanager
def store_errors(site_dir: Path) -> Iterator[None]:
    """DuckDB errors that escape a site store (a corrupt or truncated ``site.duckdb``) as ``SiteDataError``."""
    import duckdb

    try:
        yield
    except duckdb.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SiteDataError(f"the site store {site_dir / 'site.duckdb'} cannot be used (corrupt or truncated?): "
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
