"""Errors at the city's boundary (the root and the exit-code table: ``models.errors``).

MLflow's exceptions are translated into ``RegistryError`` where they are caught.
"""

from __future__ import annotations

from federation.errors import (
    AggregateCheckError,
    NotEnoughSitesError,
    RegistryError,
    SiteDataError,
)
from models.errors import ExitCode, FenjiError

__all__ = ["AggregateCheckError", "AuditTamperedError", "NotEnoughSitesError", "RegistryError", "SiteDataError"]


class AuditTamperedError(FenjiError):
    """The audit log's hash chain is broken, or its last line is torn."""

    exit_code = ExitCode.AUDIT
