"""Errors of the protocol both sides speak (the root and the exit-code table: ``models.errors``)."""

from __future__ import annotations

from models.errors import ExitCode, FenjiError

__all__ = [
    "AggregateCheckError",
    "AuditTamperedError",
    "CiphertextError",
    "NotEnoughSitesError",
    "PrivacyError",
    "RegistryError",
    "SettingsError",
    "SiteDataError",
]


class SettingsError(FenjiError):
    """An environment variable ``FENJI_*`` holds a value Fenji cannot use."""

    exit_code = ExitCode.SETTINGS


class SiteDataError(FenjiError):
    """A site has no usable data for a task (or no store at all)."""

    exit_code = ExitCode.SITE_DATA


class RegistryError(FenjiError):
    """The model registry refused an operation, or a version failed its digest check."""

    exit_code = ExitCode.REGISTRY


class PrivacyError(FenjiError):
    """A request would break a privacy invariant."""

    exit_code = ExitCode.PRIVACY


class NotEnoughSitesError(PrivacyError):
    """An aggregate over fewer than ``min-sites`` sites: refused."""


class CiphertextError(PrivacyError):
    """A site's reply is not a valid ciphertext of this protocol (malformed, wrong size or scale)."""


class AggregateCheckError(PrivacyError):
    """A decrypted aggregate fails a consistency check (non-finite values, a contributor count or a
    weight sum that contradicts what the sites declared): it is never adopted."""


class AuditTamperedError(FenjiError):
    """An audit log's hash chain is broken, or its last line is torn."""

    exit_code = ExitCode.AUDIT
