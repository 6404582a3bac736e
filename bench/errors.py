"""The benchmarks' one error (the root and the exit-code table: ``models.errors``)."""

from __future__ import annotations

from models.errors import ExitCode, FenjiError

__all__ = ["BenchUnavailable"]


class BenchUnavailable(FenjiError):
    """The benchmark cannot run here: an unknown name, no data set, no load generator, a server that
    does not start."""

    exit_code = ExitCode.USAGE  # a usage error, as click's own
