"""Property: whatever junk an export holds, every row is accounted for and every accepted value is the
value the file held.

Each generated cell carries its own truth (valid or not, and the value it stands for), so the check
does not reuse the ingest's parsing: a row is accepted exactly when all its cells are valid, and then
its stored values are those of its cells.
"""

from __future__ import annotations

import csv
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from models.spec import load_task
from node_agent.ingest import ingest_file
from node_agent.mapping import Mapping
from node_agent.store import SiteStore
from simulation.synth import COMPLAINTS

SPEC = load_task("referral_risk")
CONTENT_HASH = Mapping.model_validate({"record_id": {"content_hash": True}})
NOT_NUMBERS = ["abc", "1_0", "0x1A", "inf", "nan", "-Infinity", "1,5", "1 0", "--1", "5e", "٥", "12abc", "½",
               "1e400", "3.2.1"]
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


@dataclass(frozen=True)
class Cell:
    text: str
    ok: bool
    value: object = None  # what the store must hold when the row is accepted


def _missing(required: bool) -> st.SearchStrategy[Cell]:
    return st.sampled_from(["", "NA", "  "]).map(lambda t: Cell(t, not required))


def _number_text(v: float) -> st.SearchStrategy[str]:
    forms = [f"{v:.1f}", f"{v:.3e}", f"+{v:.2f}", f" {v:.1f} "]
    if v == int(v):
        forms += [str(int(v)), f"{int(v)}."]
    return st.sampled_from(forms)


def numeric(lo: float, hi: float, *, required: bool) -> st.SearchStrategy[Cell]:
    def cell(text: str) -> Cell:
        value = float(text)  # a plain decimal number: Python and the clinic agree on what it says
        return Cell(text, lo <= value <= hi, value)

    valid = st.one_of(st.integers(int(lo), int(hi)).map(float), st.floats(lo, hi)).flatmap(_number_text).map(cell)
    out_of_range = st.integers(int(hi) + 1, int(hi) + 500).map(lambda v: Cell(str(v), False))
    junk = st.sampled_from(NOT_NUMBERS).map(lambda t: Cell(t, False))
    return st.one_of(valid, valid, out_of_range, junk, _missing(required))


def category(values: list[str], junk: list[str], *, required: bool) -> st.SearchStrategy[Cell]:
    valid = st.sampled_from(values).flatmap(lambda v: st.sampled_from([Cell(v, True, v), Cell(f" {v} ", True, v)]))
    return st.one_of(valid, valid, st.sampled_from(junk).map(lambda t: Cell(t, False)), _missing(required))


BOOLEANS = {"1": True, "yes": True, "TRUE": True, "Y": True, "0": False, "No": False, "f": False, "0.0": False}
COLUMNS = {
    "age": numeric(0, 120, required=True),
    "sex": category(["F", "M"], ["X", "f", "F,M", '"M"', "男"], required=True),
    "temperature": numeric(30, 43, required=False),
    "complaint": category(COMPLAINTS, ["Fever", "fever,cough", "fever\nother", "chest pain"], required=True),
    "hx_diabetes": st.one_of(st.sampled_from(list(BOOLEANS)).map(lambda t: Cell(t, True, BOOLEANS[t])),
                             st.sampled_from(["maybe", "2", "oui"]).map(lambda t: Cell(t, False)), _missing(False)),
    "note": ANY_TEXT.map(lambda t: Cell(t, True)),  # not a task column: it only has to be read
    "referred_up": category(["0", "1"], ["2", "yes", "1.0"], required=True),
}


@st.composite
def exports(draw) -> tuple[list[str], list[dict[str, Cell]]]:
    """A header in a random column order and 1-15 rows of cells, each with a unique record id."""
    rows = []
    for i in range(draw(st.integers(1, 15))):
        row = {name: draw(strategy) for name, strategy in COLUMNS.items()}
        suffix = draw(st.text(alphabet='ab,"é中\n ;', max_size=4))
        row["encounter_id"] = draw(st.sampled_from([Cell(f"r{i}:{suffix}.", True, f"r{i}:{suffix}.")] * 5
                                                   + [Cell("", False), Cell("NA", False)]))
        rows.append(row)
    return draw(st.permutations(["encounter_id", *COLUMNS])), rows


def _write(path: Path, header: list[str], rows: list[dict[str, Cell]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([[row[c].text for c in header] for row in rows])
    return path


def _accepted(row: dict[str, Cell], *, with_id: bool) -> bool:
    return all(cell.ok for name, cell in row.items() if with_id or name != "encounter_id")


def _same(stored: object, expected: object) -> bool:
    if expected is None:
        return pd.isna(stored)
    if isinstance(expected, float):
        return math.isclose(float(stored), expected, rel_tol=0, abs_tol=0)
    return stored == expected


def _assert_values(stored: pd.Series, row: dict[str, Cell]) -> None:
    for name in ("age", "sex", "temperature", "complaint", "hx_diabetes", "referred_up"):
        assert _same(stored[name], row[name].value), (name, stored[name], row[name])


@settings(max_examples=30, deadline=None)
@given(exports())
def test_every_row_is_accepted_or_quarantined_and_accepted_values_are_the_files(export):
    header, rows = export
    with tempfile.TemporaryDirectory() as tmp, SiteStore(Path(tmp) / "site") as store:
        summary = ingest_file(store, SPEC, _write(Path(tmp) / "export.csv", header, rows), Mapping())
        assert summary.rows_read == len(rows) == summary.accepted + summary.quarantined
        expected = {r["encounter_id"].value: r for r in rows if _accepted(r, with_id=True)}
        loaded = store.load(SPEC).set_index("record_id")
        assert set(loaded.index) == set(expected)
        for record_id, row in expected.items():
            _assert_values(loaded.loc[record_id], row)
        quarantined = set(store.quarantine().row_number)
        assert quarantined == {i + 1 for i, r in enumerate(rows) if not _accepted(r, with_id=True)}


@settings(max_examples=15, deadline=None)
@given(exports(), exports())
def test_a_longer_export_adds_exactly_its_new_rows_under_content_hash_ids(first, more):
    header, rows = first
    longer = rows + more[1]
    with tempfile.TemporaryDirectory() as tmp, SiteStore(Path(tmp) / "site") as store:
        one = ingest_file(store, SPEC, _write(Path(tmp) / "one.csv", header, rows), CONTENT_HASH)
        two = ingest_file(store, SPEC, _write(Path(tmp) / "two.csv", header, longer), CONTENT_HASH)
        ok = [_accepted(r, with_id=False) for r in longer]
        assert one.accepted == sum(ok[: len(rows)]) and two.already_stored == one.accepted
        assert two.accepted == sum(ok[len(rows):]) and two.quarantined == ok.count(False)
        assert store.count(SPEC) == sum(ok)
        loaded = store.load(SPEC).set_index("record_id")
        for summary, written in ((one, rows), (two, longer)):
            for record_id, row_number in store.record_rows(SPEC, summary.ingest_id).itertuples(index=False):
                _assert_values(loaded.loc[record_id], written[row_number - 1])
