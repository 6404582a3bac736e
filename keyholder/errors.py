"""What the key holder refuses with: the protocol's own errors, so both sides name them alike
(the root and the exit-code table: ``models.errors``), and its own for its state and enrolments."""

from __future__ import annotations

from federation.errors import (
    AggregateCheckError,
    CiphertextError,
    NotEnoughSitesError,
    PrivacyError,
    SettingsError,
)

__all__ = ["AggregateCheckError", "CiphertextError", "CohortError", "EnrolmentError", "KeyHolderStateError",
           "NotEnoughSitesError", "PrivacyError", "ReplayError", "RoleError"]


class KeyHolderStateError(SettingsError):
    """The key holder's folder is missing or incomplete."""


class EnrolmentError(PrivacyError):
    """An enrolment or token request the key holder refuses (a taken site id, a twin institution)."""


class CohortError(PrivacyError):
    """A decryption whose claimed cohort is not allowed: unknown or repeated sites, or one that differs
    from an earlier cohort of the same kind of query by fewer than min-sites sites."""


class RoleError(PrivacyError):
    """A caller whose token's role does not allow the request (an audit token asking to decrypt)."""


class ReplayError(PrivacyError):
    """A second decryption for the same (run, phase, round)."""
