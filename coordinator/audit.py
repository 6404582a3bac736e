"""The coordinator's audit log: the protocol's hash-chained log (``federation.audit``)."""

from __future__ import annotations

from federation.audit import AuditLog
from federation.errors import AuditTamperedError

__all__ = ["AuditLog", "AuditTamperedError"]
