"""Errors at the city's boundary (the root and the exit-code table: ``models.errors``).

MLflow's exceptions are translated into ``RegistryError`` where they are caught.
"""

from __future__ import annotations

from federation.errors import (
    AggregateCheckError,
    AuditTamperedError,
    NotEnoughSitesError,
    RegistryError,
    SiteDataError,
)

__all__ = ["AggregateCheckError", "AuditTamperedError", "NotEnoughSitesError", "RegistryError", "SiteDataError"]

