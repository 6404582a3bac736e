"""Errors raised across Fenji, one hierarchy with one exit code each.

    FenjiError                 exit 1
    ├── TaskSpecError          exit 2   a task YAML is missing or invalid
    ├── MappingError           exit 3   a mapping YAML is missing or invalid
    ├── IngestError            exit 4   an input file cannot be read
    ├── SiteDataError          exit 5   a site has no usable data for a task
    ├── PrivacyError           exit 6   a request would break a privacy invariant
    │   ├── NotEnoughSitesError         an aggregate over fewer than min-sites sites
    │   ├── EgressViolation             a node reply holds more than it declared
    │   ├── CiphertextError             a site's reply is not a valid ciphertext of the protocol
    │   └── AggregateCheckError         a decrypted aggregate fails a consistency check
    └── RegistryError          exit 7   the model registry refused an operation

Foreign exceptions (DuckDB, MLflow, TenSEAL, Flower) are translated where they are caught, with
``raise FenjiError(...) from exc``.
"""

from __future__ import annotations

__all__ = [
    "AggregateCheckError",
    "CiphertextError",
    "EgressViolation",
    "FenjiError",
    "IngestError",
    "MappingError",
    "NotEnoughSitesError",
    "PrivacyError",
    "RegistryError",
    "SiteDataError",
    "TaskSpecError",
]


class FenjiError(Exception):
    """Base of every error Fenji raises on purpose."""

    exit_code = 1


class TaskSpecError(FenjiError):
    exit_code = 2


class MappingError(FenjiError):
    exit_code = 3


class IngestError(FenjiError):
    exit_code = 4


class SiteDataError(FenjiError):
    exit_code = 5


class PrivacyError(FenjiError):
    exit_code = 6


class NotEnoughSitesError(PrivacyError):
    """An aggregate over fewer than ``min-sites`` sites: the key holder refuses to decrypt it, and
    the coordinator refuses to form it when too few sites sent a usable reply."""


class EgressViolation(PrivacyError):
    """A node's reply holds something other than ciphertexts and declared aggregate numbers."""


class CiphertextError(PrivacyError):
    """A site's reply is not what the protocol expects: it does not unpack or deserialise under the
    public context, or holds the wrong number of values or the wrong scale. The reply is left out."""


class AggregateCheckError(PrivacyError):
    """A decrypted aggregate is inconsistent (values not finite, contributor slot not the number of
    summed replies, totals unlike the sites' declared row counts): it is never adopted."""


class RegistryError(FenjiError):
    exit_code = 7
