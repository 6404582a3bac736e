"""What the key holder refuses with: the protocol's own errors, so both sides name them alike
(the root and the exit-code table: ``models.errors``)."""

from __future__ import annotations

from federation.errors import (
    AggregateCheckError,
    CiphertextError,
    NotEnoughSitesError,
    PrivacyError,
)

__all__ = ["AggregateCheckError", "CiphertextError", "NotEnoughSitesError", "PrivacyError"]
