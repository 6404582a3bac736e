"""The ``fenji`` command's error boundary: every failure ends in one readable line on stderr.

Known failures are ``FenjiError``s, each with its exit code (``models.errors``); an ``OSError`` that
escaped a command is reported with its path (exit 74, ``EX_IOERR``); anything else is an internal
error (exit 70, ``EX_SOFTWARE``) whose traceback ``fenji --verbose …`` shows. Paths at the clinic
are checked by ``node_agent.paths``.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from models.errors import ExitCode, FenjiError, first_line
from node_agent.paths import no_file_above

__all__ = ["FenjiGroup", "fail", "is_verbose", "output_file", "print_error", "set_verbose"]

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
            raise typer.Exit(ExitCode.IO) from None
        except Exception as exc:
            if is_verbose(ctx):
                raise
            first = first_line(exc)
            err_console.print(f"[bold red]internal error:[/] {escape(type(exc).__name__)}"
                              f"{': ' + escape(first) if first != type(exc).__name__ else ''} "
                              "(run with --verbose for the traceback: fenji --verbose …)")
            raise typer.Exit(ExitCode.INTERNAL) from None


def output_file(path: Path, what: str) -> Path:
    """``path`` if a file can be written there (checked before a long run, not after it)."""
    if path.is_dir():
        raise FenjiError(f"the {what} {path} is a folder: give a file name")
    no_file_above(path, f"the {what} {path}", FenjiError)
    return path
