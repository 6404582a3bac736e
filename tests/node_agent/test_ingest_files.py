"""Ingest reads exactly the file named, as the clinic wrote it: names, headers, numbers, ids, CSV quoting."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fenji.cli import app
from models.spec import load_task
from node_agent.errors import IngestError, MappingError
from node_agent.ingest import ingest_file
from node_agent.mapping import Mapping, load_mapping

HEADER = "encounter_id,age,sex,sbp,heart_rate,spo2,avpu,complaint,referred_up\n"
ROW = "{id},54,M,130,80,97,A,fever,0\n"
UCI_ROWS = ["63.0,1.0,1.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0",
            "67.0,1.0,4.0,160.0,286.0,0.0,2.0,108.0,1.0,1.5,2.0,3.0,3.0,2",
            "37.0,1.0,3.0,130.0,250.0,0.0,0.0,187.0,0.0,3.5,3.0,0.0,3.0,0"]


def _write(folder: Path, text: str, name: str = "export.csv", encoding: str = "utf-8") -> Path:
    path = folder / name
    path.write_bytes(text.encode(encoding))
    return path


def _ids(store, spec) -> list[str]:
    return sorted(store.load(spec).record_id)


def _reasons(store) -> dict[int, str]:
    q = store.quarantine()
    return dict(zip(q.row_number, q.reason))


# --- 2. a file name is a file name -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["export[1].csv", "ex*.csv", "ex?.csv", "~export.csv"])
def test_the_file_named_is_the_file_read(tmp_path, site_store, referral_spec, name):
    for decoy in ("export1.csv", "exa.csv", "exb.csv"):  # what DuckDB's glob would match instead
        _write(tmp_path, HEADER + ROW.format(id=f"decoy-{decoy}"), decoy)
    path = _write(tmp_path, HEADER + ROW.format(id="real-1") + ROW.format(id="real-2"), name)
    summary = ingest_file(site_store, referral_spec, path, Mapping())
    assert (summary.rows_read, summary.accepted) == (2, 2)
    assert _ids(site_store, referral_spec) == ["real-1", "real-2"]
    logged = site_store.connection.execute("SELECT source_file FROM ingest_log").fetchall()
    assert logged == [(str(path),)]


def test_a_parquet_file_name_is_not_a_glob_either(tmp_path, site_store, referral_spec):
    frame = pd.DataFrame({"encounter_id": ["p1"], "age": ["40"], "sex": ["F"], "complaint": ["fever"],
                          "referred_up": ["0"]})
    frame.assign(encounter_id=["decoy"]).to_parquet(tmp_path / "export1.parquet")
    frame.to_parquet(tmp_path / "export[1].parquet")
    ingest_file(site_store, referral_spec, tmp_path / "export[1].parquet", Mapping())
    assert _ids(site_store, referral_spec) == ["p1"]


# --- 3. no header, no silent loss ------------------------------------------------------------------

def test_a_file_without_a_header_row_stops_with_what_was_expected(tmp_path, site_store, referral_spec):
    path = _write(tmp_path, "".join(ROW.format(id=f"e{i}") for i in range(20)))
    with pytest.raises(IngestError) as info:
        ingest_file(site_store, referral_spec, path, Mapping())
    message = str(info.value)
    assert "names no column for the task's label referred_up, required feature age" in message
    assert "looks like a record, not a header" in message and "header: false, columns: [...]" in message
    assert site_store.count(referral_spec) == 0 and len(site_store.quarantine()) == 0


def test_a_headerless_file_with_named_columns_keeps_its_first_record(tmp_path, site_store, referral_spec):
    path = _write(tmp_path, "".join(ROW.format(id=f"e{i}") for i in range(1, 4)))
    mapping = Mapping.model_validate({"format": {"header": False, "columns": HEADER.strip().split(",")}})
    summary = ingest_file(site_store, referral_spec, path, mapping)
    assert (summary.rows_read, summary.accepted) == (3, 3)
    assert list(site_store.load(referral_spec).record_id) == ["e1", "e2", "e3"]


def test_a_headerless_mapping_must_name_the_columns(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text("format: {header: false}\n")
    with pytest.raises(MappingError, match="needs its column names in `columns`"):
        load_mapping(bad)


# --- 4. numbers are numbers ------------------------------------------------------------------------

def test_only_plain_decimal_numbers_are_numbers(tmp_path, site_store, referral_spec):
    junk = ["1_0", "0x1A", "inf", "nan", "Infinity", "1,000", "1 0", "5e", "٥٤", "--5", "5.4.1", "1e400"]
    fine = {"54": 54.0, "+54": 54.0, "54.": 54.0, ".5": 0.5, "5.4e1": 54.0, "5E+1": 50.0, " 54 ": 54.0}
    cells = junk + list(fine)
    path = _write(tmp_path, HEADER + "".join(f'e{i},"{c}",M,130,80,97,A,fever,0\n' for i, c in enumerate(cells)))
    summary = ingest_file(site_store, referral_spec, path, Mapping())
    assert (summary.accepted, summary.quarantined) == (len(fine), len(junk))
    reasons = _reasons(site_store)
    assert reasons[1] == "age: 1_0 is not a number" and reasons[2] == "age: 0x1A is not a number"
    stored = site_store.load(referral_spec).set_index("record_id")["age"]
    assert {cells[int(i[1:])]: age for i, age in stored.items()} == fine


def test_a_decimal_comma_file_takes_no_decimal_points(tmp_path, site_store, referral_spec):
    text = "encounter_id;age;sex;temperature;complaint;referred_up\nz1;54;M;38,5;fever;1\nz2;61;F;38.5;fever;0\n"
    mapping = Mapping.model_validate({"format": {"separator": ";", "decimal": ","}})
    summary = ingest_file(site_store, referral_spec, _write(tmp_path, text), mapping)
    assert (summary.accepted, summary.quarantined) == (1, 1)
    assert _reasons(site_store) == {2: "temperature: 38.5 is not a number (decimal mark ',')"}


# --- 5. re-ingest never duplicates -----------------------------------------------------------------

def test_a_longer_export_without_record_ids_adds_only_its_new_rows(tmp_path, site_store):
    spec, mapping = load_task("heart_disease"), load_mapping("uci_heart_disease")
    first = [*UCI_ROWS, UCI_ROWS[0]]  # two identical patients: both are kept
    summary = ingest_file(site_store, spec, _write(tmp_path, "\n".join(first) + "\n", "v1.data"), mapping)
    assert (summary.accepted, summary.quarantined) == (4, 0)
    ids = _ids(site_store, spec)
    assert len(set(ids)) == 4 and all(len(i.split("#")[0]) == 16 for i in ids)
    new_patient = "41.0,0.0,2.0,130.0,204.0,0.0,2.0,172.0,0.0,1.4,1.0,0.0,3.0,0"
    longer = [*first, UCI_ROWS[1].replace("67.0", "68.0"), UCI_ROWS[0], new_patient]
    again = ingest_file(site_store, spec, _write(tmp_path, "\n".join(longer) + "\n", "v2.data"), mapping)
    assert (again.rows_read, again.accepted, again.quarantined, again.already_stored) == (7, 3, 0, 4)
    assert site_store.count(spec) == 7
    assert (site_store.load(spec)["age"] == 63).sum() == 3  # the third copy of patient 1 is a new record


def test_the_same_values_written_differently_are_the_same_record(tmp_path, site_store):
    spec, mapping = load_task("heart_disease"), load_mapping("uci_heart_disease")
    ingest_file(site_store, spec, _write(tmp_path, UCI_ROWS[0] + "\n", "a.data"), mapping)
    rewritten = "63,1,1,145,233,1,2,150,0,2.30,3,0,6,0\n"
    summary = ingest_file(site_store, spec, _write(tmp_path, rewritten, "b.data"), mapping)
    assert (summary.accepted, summary.already_stored) == (0, 1)


# --- 6. a record id can be derived -----------------------------------------------------------------

TWO_DEPARTMENTS = ("dept,visit_no,age,sex,complaint,referred_up\n"
                   "ER,001,54,M,fever,0\nOPD,001,60,F,fever,1\nER,002,70,F,trauma,1\nER,,33,M,fever,0\n"
                   "OPD,001,61,F,fever,1\n")


def test_a_record_id_from_two_columns(tmp_path, site_store, referral_spec):
    mapping_file = tmp_path / "two_departments.yaml"
    mapping_file.write_text("record_id: {columns: [dept, visit_no], separator: '/'}\n")
    summary = ingest_file(site_store, referral_spec, _write(tmp_path, TWO_DEPARTMENTS), load_mapping(mapping_file))
    assert (summary.accepted, summary.quarantined) == (3, 2)
    assert _ids(site_store, referral_spec) == ["ER/001", "ER/002", "OPD/001"]
    assert _reasons(site_store) == {4: "missing record id",
                                    5: "duplicate record id OPD/001 (first seen at row 2)"}
    assert summary.ignored_columns == []


def test_a_record_id_from_the_content(tmp_path, site_store, referral_spec):
    mapping = Mapping.model_validate({"record_id": {"content_hash": True}})
    path = _write(tmp_path, TWO_DEPARTMENTS)
    summary = ingest_file(site_store, referral_spec, path, mapping)
    assert (summary.accepted, summary.quarantined) == (5, 0)
    assert all("#" in i for i in _ids(site_store, referral_spec))
    again = _write(tmp_path, TWO_DEPARTMENTS + "ER,003,45,M,other,0\n", "again.csv")
    assert ingest_file(site_store, referral_spec, again, mapping).accepted == 1


def test_without_an_id_column_the_error_names_the_mapping_settings(tmp_path, site_store, referral_spec):
    with pytest.raises(IngestError, match=r"record id column 'encounter_id'.*record_id: \{columns: \[\.\.\.\]\}"):
        ingest_file(site_store, referral_spec, _write(tmp_path, TWO_DEPARTMENTS), Mapping())


@pytest.mark.parametrize("rule", [{}, {"columns": []}, {"columns": ["a"], "content_hash": True}])
def test_a_record_id_rule_is_one_rule(rule):
    with pytest.raises(ValueError, match="either `columns"):
        Mapping.model_validate({"record_id": rule})


def test_mappings_without_a_record_id_rule_keep_their_digest():
    """The ingest log keys on the digest: an old store must still know the files it ingested."""
    import hashlib

    mapping = load_mapping("uci_heart_disease")
    before = hashlib.sha256(mapping.model_dump_json(exclude={"record_id"}).encode()).hexdigest()
    assert mapping.digest() == before
    assert Mapping.model_validate({"record_id": {"content_hash": True}}).digest() != Mapping().digest()


# --- 7. valid CSV is accepted; errors say why ------------------------------------------------------

def test_a_quoted_field_may_hold_newlines_commas_and_quotes(tmp_path, site_store, referral_spec):
    text = (HEADER.strip() + ",note\n" + ROW.format(id="e1").strip() + ',"line one\nline two, ""quoted"""\n'
            + ROW.format(id='"e2\nb"').strip() + ",plain\n")
    summary = ingest_file(site_store, referral_spec, _write(tmp_path, text), Mapping())
    assert (summary.rows_read, summary.accepted) == (2, 2)
    assert _ids(site_store, referral_spec) == ["e1", "e2\nb"]


def test_records_starting_with_a_hash_sign_are_records(tmp_path, site_store, referral_spec):
    """DuckDB's sniffer took '#' for a comment marker here and dropped records #1 and #3 unseen."""
    text = HEADER + ROW.format(id="#1") + ROW.format(id="e2") + ROW.format(id="#3 x") + "# checked by the nurse\n"
    summary = ingest_file(site_store, referral_spec, _write(tmp_path, text), Mapping())
    assert (summary.rows_read, summary.accepted, summary.quarantined) == (4, 3, 1)
    assert _ids(site_store, referral_spec) == ["#1", "#3 x", "e2"]
    assert "missing label" in _reasons(site_store)[4]


def test_a_duckdb_error_keeps_its_cause_and_names_the_real_file(tmp_path, site_store, referral_spec):
    body = "".join(ROW.format(id=f"e{i}") for i in range(16)).encode() + b"e16,54,M,130,80,97,A,f\xe8ver,0\n"
    path = tmp_path / "export[2].csv"
    path.write_bytes(HEADER.encode() + body)
    with pytest.raises(IngestError) as info:
        ingest_file(site_store, referral_spec, path, Mapping())
    message = str(info.value)
    assert "not utf-8 encoded" in message and str(path) in message
    assert "Possible Solution" not in message and "fenji-ingest-" not in message


def test_mixed_line_endings_are_named_as_the_cause(tmp_path, site_store, referral_spec):
    path = _write(tmp_path, HEADER.replace("\n", "\r\n") + ROW.format(id="e1") + ROW.format(id="e2"))
    with pytest.raises(IngestError, match=r"cannot read .*both \\r\\n and \\n"):
        ingest_file(site_store, referral_spec, path, Mapping())


def test_a_one_column_file_gets_a_separator_hint(tmp_path, site_store, referral_spec):
    path = _write(tmp_path, (HEADER + ROW.format(id="e1")).replace(",", ";"))
    with pytest.raises(IngestError, match="looks separated by ';': set format.separator: ';'"):
        ingest_file(site_store, referral_spec, path, Mapping())


def test_a_column_empty_on_every_row_is_never_recorded(tmp_path, site_store, referral_spec):
    path = _write(tmp_path, HEADER + "e1,54,M,130,80,,A,fever,0\ne2,60,F,120,80,NA,A,fever,1\n")
    summary = ingest_file(site_store, referral_spec, path, Mapping())
    assert summary.empty_columns == ["spo2"] and "spo2" in summary.never_recorded
    assert "spo2" not in summary.absent_columns and "temperature" in summary.never_recorded
    result = CliRunner().invoke(app, ["node", "ingest", "--site-dir", str(tmp_path / "site2"), "--task",
                                      "referral_risk", "--input", str(path)])
    assert "columns empty on every row (recorded as missing): spo2" in result.output, result.output


def test_a_row_with_more_fields_than_the_header_is_quarantined(tmp_path, site_store, referral_spec):
    path = _write(tmp_path, HEADER + ROW.format(id="e1") + "e2,54,M,13,0,80,97,A,fever,0\n")
    summary = ingest_file(site_store, referral_spec, path, Mapping())
    assert (summary.accepted, summary.quarantined) == (1, 1)
    assert "more fields than the 9 columns named" in _reasons(site_store)[2]
    assert '"(extra field 10)":"0"' in site_store.quarantine().raw[0]


def test_a_column_named_twice_is_ambiguous(tmp_path, site_store, referral_spec):
    path = _write(tmp_path, HEADER.strip() + ",age\n" + ROW.format(id="e1").strip() + ",55\n")
    with pytest.raises(IngestError, match="names 'age' more than once"):
        ingest_file(site_store, referral_spec, path, Mapping())
