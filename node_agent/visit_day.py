"""The day of a visit, read at ingest from an export's ``visit_date`` column (after the mapping's rename).

No model reads it: it is kept beside the task's columns (``store.VISIT_DATE``) for syndromic
surveillance, which counts visits per day (``node_agent.surveillance``). A day written as
``2025-09-01``, ``2025/09/01`` or with a time of day is read; anything else, or no column at all,
leaves the visit without a day (it is still accepted: the models do not need it), and the ingest
summary counts such visits (``IngestSummary.undated``).
"""

from __future__ import annotations

from node_agent.mapping import Mapping
from node_agent.store import quote_ident

__all__ = ["VISIT_DATE_COLUMN", "visit_date_sql"]

VISIT_DATE_COLUMN = "visit_date"


def visit_date_sql(mapping: Mapping, columns: list[str]) -> str:
    """SQL of the visit's day (a DATE, NULL when absent or unreadable) from the export's text columns."""
    source = mapping.source_column(VISIT_DATE_COLUMN)
    if source not in columns:
        return "CAST(NULL AS DATE)"
    text = f"replace(trim({quote_ident(source)}), '/', '-')"
    return f"coalesce(TRY_CAST({text} AS DATE), CAST(TRY_CAST({text} AS TIMESTAMP) AS DATE))"
