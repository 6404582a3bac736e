"""Errors at the clinic's boundary (the root and the exit-code table: ``models.errors``).

DuckDB's and the file system's exceptions are translated into these where they are caught; the
scoring service's HTTP errors are ``node_agent.serve.errors``.
"""

from __future__ import annotations

from federation.errors import PrivacyError, RegistryError, SiteDataError
from models.errors import ExitCode, FenjiError

__all__ = ["DemoNoiseSeedError", "EgressViolation", "IngestError", "MappingError", "PolicyRefusal", "RegistryError",
           "SiteDataError", "TokenFileError"]


class MappingError(FenjiError):
    """A mapping YAML is missing or invalid."""

    exit_code = ExitCode.MAPPING


class IngestError(FenjiError):
    """An input file cannot be read as a table, or the site's store cannot be opened."""

    exit_code = ExitCode.INGEST


class TokenFileError(FenjiError):
    """The site's access-token file cannot be read (edited by hand, cut off)."""


class EgressViolation(PrivacyError):
    """A node's reply holds something other than ciphertexts and declared aggregate numbers."""


class PolicyRefusal(PrivacyError):
    """A job the site's policy does not allow (plan not approved, out of bounds, budget exhausted,
    too few rows): the node declines it before reading any record, and says why."""


class DemoNoiseSeedError(PrivacyError):
    """A site's policy seeds its DP noise (``dp.noise_seed``, for the synthetic demo and tests only):
    whoever knows the seed can predict the noise and subtract it, so such a site never joins a real
    federation."""
