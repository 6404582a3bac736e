"""Federated statistics as typed queries: what a data scientist may ask, and the vector it becomes.

A query is a pydantic object, never an SQL string: ``Count`` (rows, optionally grouped by one
categorical column), ``Mean`` (n, sum and sum of squares of a numeric column, optionally grouped:
mean and variance), ``Histogram`` (bin edges fixed in the query; quantiles are read from it) and
``CrossTab`` (two categorical columns). Columns are the task spec's features, or its label; there
are no filters, so a query cannot narrow itself to one clinic's cell. Its canonical JSON names it:
the sites bind their tags to it, the key holder decrypts it once.

Every query's cells form a complete **partition** of a site's rows (a ``(missing)`` group, the rows
outside a histogram's edges, the rows without a value): suppression at a site (``node_agent.analytics``)
then works against the site's exact row count, which it declares anyway. The vector one site sends
(``Layout``) is::

    [rows, cell_0 values, cell_1 values, ..., suppressed_0, suppressed_1, ...]

``rows`` is the site's exact row count (checked against the rows it declares), each cell holds
``width`` values (a count; or n, sum, sum of squares), and ``suppressed_i`` is 1 when the site sent
cell ``i`` as zeros because it described fewer than k rows. Summed over sites, the last part says at
how many sites each cell was suppressed. ``decode`` turns the decrypted sum into an ``AnalyticsResult``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from models.errors import ExitCode, FenjiError
from models.spec import FeatureKind, TaskSpec

__all__ = ["ALL", "MISSING", "NO_VALUE", "OUTSIDE", "AnalyticsResult", "Count", "CrossTab", "Histogram", "Layout",
           "Mean", "Query", "QueryError", "categories", "decode", "parse_query", "query_digest"]

MISSING = "(missing)"  # a categorical value the spec does not list, or none
ALL = "(all)"  # the one cell of an ungrouped count or mean
OUTSIDE = "(outside)"  # a histogram's rows without a value or outside its edges
NO_VALUE = "(no value)"  # a mean's rows without a value
MAX_CELLS = 2000


class QueryError(FenjiError):
    """A query that is malformed or does not fit the task (an unknown column, a numeric column grouped)."""

    exit_code = ExitCode.USAGE


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Count(_Query):
    """Rows, optionally per value of one categorical (or boolean, or the label) column."""

    kind: Literal["count"] = "count"
    group_by: str | None = None


class Mean(_Query):
    """Mean and variance of a numeric column, from n, sum and sum of squares; optionally grouped."""

    kind: Literal["mean"] = "mean"
    column: str
    group_by: str | None = None


class Histogram(_Query):
    """Counts of a numeric column in bins ``[e_i, e_i+1)`` (the last bin closed, as numpy's)."""

    kind: Literal["histogram"] = "histogram"
    column: str
    edges: tuple[float, ...] = Field(min_length=2, max_length=201)

    @model_validator(mode="after")
    def _increasing(self) -> Histogram:
        if not all(np.isfinite(self.edges)) or any(b <= a for a, b in pairwise(self.edges)):
            raise ValueError("histogram edges must be finite and strictly increasing")
        return self


class CrossTab(_Query):
    """Counts per pair of values of two categorical columns."""

    kind: Literal["crosstab"] = "crosstab"
    rows: str
    columns: str

    @model_validator(mode="after")
    def _distinct(self) -> CrossTab:
        if self.rows == self.columns:
            raise ValueError("a cross-tabulation needs two different columns")
        return self


Query = Annotated[Count | Mean | Histogram | CrossTab, Field(discriminator="kind")]
_ADAPTER: TypeAdapter = TypeAdapter(Query)


def canonical(query: _Query) -> str:
    """The query's canonical JSON (sorted keys, no spaces): what travels and what is digested."""
    return json.dumps(query.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def query_digest(query: _Query) -> str:
    return hashlib.sha256(canonical(query).encode()).hexdigest()


def parse_query(text: str | dict) -> Count | Mean | Histogram | CrossTab:
    """A query from its JSON (or a dict), or a ``QueryError`` saying what is wrong."""
    try:
        return _ADAPTER.validate_json(text) if isinstance(text, str) else _ADAPTER.validate_python(text)
    except ValidationError as exc:
        raise QueryError(f"not a valid query: {exc.errors()[0].get('msg', exc)}") from exc


def categories(spec: TaskSpec, column: str) -> list[str]:
    """The values of a column a query may group by, in the spec's order, then ``MISSING``.

    Raises
    ------
    QueryError
        If ``column`` is not a categorical or boolean feature or the label.
    """
    if column == spec.label.name:
        return [*spec.label.classes, MISSING]
    feature = _feature(spec, column)
    if feature.kind is FeatureKind.CATEGORICAL:
        return [*(feature.values or []), MISSING]
    if feature.kind is FeatureKind.BOOLEAN:
        return ["false", "true", MISSING]
    raise QueryError(f"column {column!r} is {feature.kind.value}: only categorical or boolean columns group rows")


def _feature(spec: TaskSpec, column: str):
    try:
        return spec.feature(column)
    except KeyError:
        raise QueryError(f"no column {column!r} in task {spec.name!r} (its features: "
                         f"{', '.join(spec.feature_names)}; label: {spec.label.name})") from None


def _numeric(spec: TaskSpec, column: str) -> None:
    feature = _feature(spec, column)
    if feature.kind is not FeatureKind.NUMERIC:
        raise QueryError(f"column {column!r} is {feature.kind.value}, not numeric")


@dataclass(frozen=True)
class Layout:
    """Where each cell of a query sits in the vector a site sends (see the module docstring).

    ``lines`` are the groups of cells whose sum a coordinator may know from elsewhere (the whole
    partition: the site's row count; a cross-tab's rows and columns: the margins of two counts).
    ``counts`` is the index of each cell's row count within its ``width`` values.
    """

    cells: list[tuple[str, ...]]
    width: int
    lines: list[list[int]]
    shape: tuple[int, ...]

    @property
    def length(self) -> int:
        return 1 + len(self.cells) * self.width + len(self.cells)

    @property
    def value_names(self) -> list[str]:
        return ["count"] if self.width == 1 else ["n", "sum", "sum_sq"]


def layout(query: _Query, spec: TaskSpec) -> Layout:
    """The query's cells for ``spec``, or a ``QueryError`` if it does not fit the task."""
    if isinstance(query, Count):
        cells = [(g,) for g in categories(spec, query.group_by)] if query.group_by else [(ALL,)]
        result = Layout(cells, 1, [list(range(len(cells)))], (len(cells),))
    elif isinstance(query, Mean):
        _numeric(spec, query.column)
        groups = categories(spec, query.group_by) if query.group_by else [ALL]
        cells = [(g,) for g in groups] + [(NO_VALUE,)]
        result = Layout(cells, 3, [list(range(len(cells)))], (len(cells),))
    elif isinstance(query, Histogram):
        _numeric(spec, query.column)
        edges = query.edges
        cells = [(f"{a:g}", f"{b:g}") for a, b in pairwise(edges)] + [(OUTSIDE, "")]
        result = Layout(cells, 1, [list(range(len(cells)))], (len(cells),))
    elif isinstance(query, CrossTab):
        rows, cols = categories(spec, query.rows), categories(spec, query.columns)
        cells = [(r, c) for r in rows for c in cols]
        grid = np.arange(len(cells)).reshape(len(rows), len(cols))
        lines = [list(range(len(cells)))] + [list(r) for r in grid] + [list(c) for c in grid.T]
        result = Layout(cells, 1, [[int(i) for i in line] for line in lines], (len(rows), len(cols)))
    else:  # pragma: no cover - the union is closed
        raise QueryError(f"unknown query {type(query).__name__}")
    if len(result.cells) > MAX_CELLS:
        raise QueryError(f"{len(result.cells)} cells, at most {MAX_CELLS}")
    return result


@dataclass
class AnalyticsResult:
    """A decrypted query: each cell summed over the cohort, and at how many sites it was suppressed.

    A suppressed cell was sent as zeros by the sites that suppressed it, so its sum covers only the
    other sites: read ``suppressed_sites`` before reading a count. ``dp_epsilon`` is the noise the
    sites declared (0: exact counts, rounded to whole numbers after decryption).
    """

    query: Count | Mean | Histogram | CrossTab
    cells: list[tuple[str, ...]]
    values: np.ndarray  # cells x width
    suppressed_sites: np.ndarray  # per cell
    rows: int
    sites: list[str]
    dp_epsilon: float = 0.0
    excluded: list = field(default_factory=list)  # the coordinator's ExcludedReply records
    audit_heads: dict[str, str] = field(default_factory=dict)  # each site's node audit head after its answer

    def to_frame(self) -> pd.DataFrame:
        """One row per cell: its key, its numbers (count; or n, mean, variance) and ``suppressed_sites``."""
        q = self.query
        frame = pd.DataFrame(self.values, columns=["count"] if self.values.shape[1] == 1 else ["n", "sum", "sum_sq"])
        if isinstance(q, Mean):
            n = frame["n"].to_numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(n > 0, frame["sum"] / n, np.nan)
                variance = np.where(n > 1, (frame["sum_sq"] - n * mean**2) / (n - 1), np.nan)
            frame = pd.DataFrame({"n": n, "mean": mean, "variance": variance})
        keys = pd.DataFrame(self.cells, columns=_key_names(q))
        frame = pd.concat([keys, frame], axis=1)
        frame["suppressed_sites"] = self.suppressed_sites.astype(int)
        return frame

    def quantile(self, q: float) -> float:
        """A quantile of a histogram's column, interpolated within its bin (rows outside the edges left out)."""
        if not isinstance(self.query, Histogram):
            raise QueryError("quantiles are read from a histogram")
        counts = np.clip(self.values[:-1, 0], 0, None)
        total = counts.sum()
        if total <= 0:
            return float("nan")
        edges = np.asarray(self.query.edges)
        cumulative = np.concatenate([[0.0], np.cumsum(counts)]) / total
        return float(np.interp(q, cumulative, edges))


def _key_names(query: _Query) -> list[str]:
    if isinstance(query, CrossTab):
        return [query.rows, query.columns]
    if isinstance(query, Histogram):
        return ["bin_left", "bin_right"]
    group = getattr(query, "group_by", None)
    return [group or "group"]


def decode(query: _Query, spec: TaskSpec, summed: np.ndarray, *, sites: list[str], dp_epsilon: float = 0.0
           ) -> AnalyticsResult:
    """The result of a decrypted sum of the sites' vectors (``Layout``)."""
    shape = layout(query, spec)
    summed = np.asarray(summed, dtype=float)
    if summed.size != shape.length:
        raise QueryError(f"a sum of {summed.size} values, the query's layout holds {shape.length}")
    n = len(shape.cells)
    values = summed[1 : 1 + n * shape.width].reshape(n, shape.width)
    if dp_epsilon == 0.0:
        # Exact counts decrypt within CKKS noise (about 1e-3 at the wide scale): they are whole numbers.
        values[:, 0] = np.round(values[:, 0])
    flags = np.round(summed[1 + n * shape.width :])
    return AnalyticsResult(query=query, cells=shape.cells, values=values, suppressed_sites=flags,
                           rows=round(float(summed[0])), sites=list(sites), dp_epsilon=dp_epsilon)
