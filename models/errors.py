"""The root of Fenji's errors, the one table of exit codes, and the model layer's own errors.

Each party has one errors module at its boundary; together they form one hierarchy. Foreign
exceptions (DuckDB, MLflow, TenSEAL, Flower, HTTP) are translated in the module that catches them,
with ``raise <FenjiError subclass>(...) from exc``::

    FenjiError                       exit  module
    ├── TaskSpecError                   2  models.errors        a task YAML is missing or invalid
    │   └── PolicyError                 2  models.errors        a tier policy YAML is invalid
    ├── BundleError                     7  models.errors        a model bundle is incomplete
    ├── SettingsError                   9  federation.errors    a FENJI_* setting is unusable
    ├── SiteDataError                   5  federation.errors    a site has no usable data for a task
    ├── RegistryError                   7  federation.errors    the model registry refused an operation
    ├── PrivacyError                    6  federation.errors    a request would break a privacy invariant
    │   ├── NotEnoughSitesError            federation.errors    an aggregate over fewer than min-sites sites
    │   ├── CiphertextError                federation.errors    a reply is not a valid ciphertext of the protocol
    │   ├── AggregateCheckError            federation.errors    a decrypted aggregate fails a consistency check
    │   ├── EgressViolation                node_agent.errors    a node reply holds more than it declared
    │   └── PolicyRefusal                  node_agent.errors    a job the site's policy does not allow
    ├── MappingError                    3  node_agent.errors    a mapping YAML is missing or invalid
    ├── IngestError                     4  node_agent.errors    an input file cannot be read
    ├── ServeError (HTTP status tree)   1  node_agent.serve.errors
    ├── AuditTamperedError              8  federation.errors    an audit log's chain is broken or torn
    └── BenchUnavailable                2  bench.errors         a benchmark cannot run here

The key holder raises the protocol's own errors (``keyholder.errors`` names them).

The shells (the ``fenji`` command) print one line for any ``FenjiError`` and exit with its code;
anything else is an internal error (``ExitCode.INTERNAL``).
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["BundleError", "ExitCode", "FenjiError", "PolicyError", "TaskSpecError", "first_line"]


class ExitCode(IntEnum):
    """Every exit code a Fenji command can end with (sysexits-style for the last two)."""

    GENERAL = 1
    USAGE = 2  # also click's own usage errors
    TASK_SPEC = 2
    MAPPING = 3
    INGEST = 4
    SITE_DATA = 5
    PRIVACY = 6
    REGISTRY = 7
    AUDIT = 8
    SETTINGS = 9
    INTERNAL = 70
    IO = 74


def first_line(exc: BaseException) -> str:
    """An exception's first line of text, or its type's name when it has none (one-line reports)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class FenjiError(Exception):
    """Base of every error Fenji raises on purpose."""

    exit_code: int = ExitCode.GENERAL


class TaskSpecError(FenjiError):
    exit_code = ExitCode.TASK_SPEC


class PolicyError(TaskSpecError):
    """A tier-policy file is missing or invalid."""


class BundleError(FenjiError):
    """A model bundle lacks a file or cannot be read."""

    exit_code = ExitCode.REGISTRY
