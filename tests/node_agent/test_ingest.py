"""Ingest of deliberately bad exports: every row accepted or quarantined with a reason, nothing lost."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fenji.cli import app
from node_agent.errors import IngestError, MappingError
from node_agent.ingest import ingest_file
from node_agent.mapping import Mapping, load_mapping

HEADER = "encounter_id,age,sex,sbp,heart_rate,spo2,avpu,complaint,referred_up\n"


def _write(tmp_path: Path, text: str, name: str = "export.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def _reasons(store) -> dict[int, str]:
    q = store.quarantine()
    return dict(zip(q.row_number, q.reason))


def _assert_nothing_lost(store, spec, summary):
    assert summary.accepted + summary.quarantined + summary.already_stored == summary.rows_read
    assert store.count(spec) >= summary.accepted
    assert len(store.quarantine(spec.name)) >= summary.quarantined


def test_bad_rows_are_quarantined_with_readable_reasons(tmp_path, site_store, referral_spec):
    path = _write(tmp_path, HEADER + (
        "e1,54,M,130,80,97,A,fever,0\n"
        "e2,abc,F,120,80,97,A,fever,1\n"          # wrong type
        "e3,60,F,120,900,130,A,fever,1\n"         # impossible heart rate and SpO2
        "e4,40,X,120,80,97,Q,chest_pain,0\n"      # unknown categories
        "e1,50,M,130,80,97,A,fever,0\n"           # duplicate record id
        "e6,,M,130,80,97,A,fever,0\n"             # missing required field
        "e7,61,F,130,80,97,A,fever,\n"            # missing label
    ))
    summary = ingest_file(site_store, referral_spec, path, Mapping())
    _assert_nothing_lost(site_store, referral_spec, summary)
    assert (summary.rows_read, summary.accepted, summary.quarantined) == (7, 1, 6)
    reasons = _reasons(site_store)
    assert "age: abc is not a number" in reasons[2]
    assert "heart_rate: 900 is outside the valid range" in reasons[3]
    assert "spo2: 130 is outside the valid range" in reasons[3]
    assert "sex: unknown category X" in reasons[4] and "avpu: unknown category Q" in reasons[4]
    assert "duplicate record id e1 (first seen at row 1)" in reasons[5]
    assert "missing required field age" in reasons[6]
    assert "missing label referred_up" in reasons[7]
    raw = site_store.quarantine().set_index("row_number").loc[3, "raw"]
    assert '"heart_rate":"900"' in raw  # the original row is kept, untouched


def test_reingesting_the_same_file_adds_nothing(tmp_path, site_store, referral_spec):
    path = _write(tmp_path, HEADER + "e1,54,M,130,80,97,A,fever,0\ne2,54,M,130,80,97,A,zzz,0\n")
    first = ingest_file(site_store, referral_spec, path, Mapping())
    second = ingest_file(site_store, referral_spec, path, Mapping())
    assert (first.accepted, first.quarantined) == (1, 1)
    assert second.already_ingested and second.accepted == 0
    assert site_store.count(referral_spec) == 1
    assert len(site_store.quarantine()) == 1


def test_same_records_in_a_new_file_are_recognised_and_changed_ones_quarantined(tmp_path, site_store, referral_spec):
    ingest_file(site_store, referral_spec, _write(tmp_path, HEADER + "e1,54,M,130,80,97,A,fever,0\n"
                                                                     "e2,60,F,120,80,97,A,fever,1\n"), Mapping())
    again = _write(tmp_path, HEADER + "e1,54.0,M,130,80,97,A,fever,0\n"   # the same record, re-exported
                                      "e2,61,F,120,80,97,A,fever,1\n"     # the same id, another age
                                      "e9,54,M,130,80,97,A,fever,1\n", "second.csv")
    summary = ingest_file(site_store, referral_spec, again, Mapping())
    assert (summary.rows_read, summary.accepted, summary.quarantined, summary.already_stored) == (3, 1, 1, 1)
    assert _reasons(site_store) == {2: "duplicate record id e2 (already in the site store with other values)"}
    assert site_store.count(referral_spec) == 3
    assert site_store.load(referral_spec).set_index("record_id").loc["e2", "age"] == 60


def test_missing_optional_column_is_recorded_as_missing_not_invented(tmp_path, site_store, referral_spec):
    path = _write(tmp_path, "encounter_id,age,sex,complaint,referred_up\ne1,54,M,fever,0\n")
    summary = ingest_file(site_store, referral_spec, path, Mapping())
    assert summary.accepted == 1 and "spo2" in summary.absent_columns
    row = site_store.load(referral_spec).iloc[0]
    assert pd.isna(row["spo2"]) and pd.isna(row["heart_rate"])


def test_missing_required_column_stops_the_ingest_and_says_what_is_missing(tmp_path, site_store, referral_spec):
    path = _write(tmp_path, "encounter_id,sex,complaint,referred_up\ne1,M,fever,0\ne2,F,fever,1\n")
    with pytest.raises(IngestError, match="names no column for the task's required feature age"):
        ingest_file(site_store, referral_spec, path, Mapping())
    assert site_store.count(referral_spec) == 0 and len(site_store.quarantine()) == 0


def test_gbk_semicolons_and_decimal_commas(tmp_path, site_store, referral_spec):
    text = "编号;age;sex;temperature;complaint;referred_up\nz1;54;M;38,5;fever;1\nz2;61;F;36,9;other;0\n"
    path = _write(tmp_path, text, encoding="gbk")
    mapping = Mapping.model_validate({
        "format": {"separator": ";", "decimal": ",", "encoding": "gbk"}, "rename": {"编号": "encounter_id"},
    })
    summary = ingest_file(site_store, referral_spec, path, mapping)
    assert (summary.accepted, summary.quarantined) == (2, 0)
    assert sorted(site_store.load(referral_spec)["temperature"]) == [36.9, 38.5]


def test_latin1_export_read_by_duckdb_itself(tmp_path, site_store, referral_spec):
    path = _write(tmp_path, HEADER.replace("complaint", "plainte") + "é1,54,M,130,80,97,A,fever,0\n", encoding="latin-1")
    mapping = Mapping.model_validate({"format": {"encoding": "latin-1"}, "rename": {"plainte": "complaint"}})
    summary = ingest_file(site_store, referral_spec, path, mapping)
    assert summary.accepted == 1 and site_store.load(referral_spec).record_id[0] == "é1"


def test_wrong_encoding_is_a_clear_error_and_writes_nothing(tmp_path, site_store, referral_spec):
    path = _write(tmp_path, "编号,age\n1,2\n", encoding="gbk")
    with pytest.raises(IngestError, match="cannot read"):
        ingest_file(site_store, referral_spec, path, Mapping())
    assert site_store.count(referral_spec) == 0 and len(site_store.quarantine()) == 0


def test_mapping_renames_maps_values_and_missing_markers(tmp_path, site_store, referral_spec):
    path = _write(tmp_path, "id,Alter,Geschlecht,SpO2,complaint,outcome\n1,54,w,?,fever,ja\n2,70,m,95,other,nein\n")
    mapping = Mapping.model_validate({
        "rename": {"id": "encounter_id", "Alter": "age", "Geschlecht": "sex", "SpO2": "spo2", "outcome": "referred_up"},
        "values": {"sex": {"w": "F", "m": "M"}, "referred_up": {"ja": 1, "nein": 0}},
        "missing": ["?"],
    })
    summary = ingest_file(site_store, referral_spec, path, mapping)
    assert summary.accepted == 2
    frame = site_store.load(referral_spec).set_index("record_id")
    assert frame.loc["1", "sex"] == "F" and pd.isna(frame.loc["1", "spo2"]) and frame.loc["2", "referred_up"] == "0"


def test_parquet_input(tmp_path, site_store, referral_spec):
    path = tmp_path / "export.parquet"
    pd.DataFrame({"encounter_id": ["p1", "p2"], "age": [40, 300], "sex": ["F", "M"], "complaint": ["fever", "fever"],
                  "referred_up": [0, 1]}).to_parquet(path)
    summary = ingest_file(site_store, referral_spec, path, Mapping())
    assert (summary.accepted, summary.quarantined) == (1, 1)


def test_bad_mapping_file_is_a_mapping_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: {decimal: ';'}\n")
    with pytest.raises(MappingError, match="decimal"):
        load_mapping(bad)
    with pytest.raises(MappingError, match="not found"):
        load_mapping(tmp_path / "absent.yaml")


@pytest.mark.parametrize("case", ["missing-file", "bad-mapping", "unknown-task"])
def test_cli_errors_exit_non_zero_without_traceback(tmp_path, case):
    export = _write(tmp_path, HEADER + "e1,54,M,130,80,97,A,fever,0\n")
    bad_mapping = tmp_path / "m.yaml"
    bad_mapping.write_text("format: [not, a, mapping]\n")
    args = {
        "missing-file": ["--task", "referral_risk", "--input", str(tmp_path / "nope.csv")],
        "bad-mapping": ["--task", "referral_risk", "--input", str(export), "--mapping", str(bad_mapping)],
        "unknown-task": ["--task", "no_such_task", "--input", str(export)],
    }[case]
    result = CliRunner().invoke(app, ["node", "ingest", "--site-dir", str(tmp_path / "site"), *args])
    assert result.exit_code not in (0, 1), result.output
    assert "error:" in result.output and "Traceback" not in result.output


def test_cli_ingest_prints_summary(tmp_path):
    export = _write(tmp_path, HEADER + "e1,54,M,130,80,97,A,fever,0\ne2,54,M,130,80,97,A,fever,5\n")
    result = CliRunner().invoke(app, ["node", "ingest", "--site-dir", str(tmp_path / "site"), "--task",
                                      "referral_risk", "--input", str(export)])
    assert result.exit_code == 0, result.output
    assert "accepted 1" in result.output and "quarantined 1" in result.output


def test_a_site_can_fix_its_own_split(tmp_path, site_store, referral_spec):
    path = _write(tmp_path, HEADER + "".join(f"e{i},54,M,130,80,97,A,fever,{i % 2}\n" for i in range(10)))
    ingest_file(site_store, referral_spec, path, Mapping())
    split = pd.DataFrame({"record_id": [f"e{i}" for i in range(10)], "split": ["test"] * 3 + ["train"] * 6 + ["other"]})
    site_store.set_split(referral_spec, split)
    assert sorted(site_store.load(referral_spec, split="test").record_id) == ["e0", "e1", "e2"]
    assert len(site_store.load(referral_spec, split="train")) == 6
    assert len(site_store.load(referral_spec)) == 10
