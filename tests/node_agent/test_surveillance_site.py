"""A site's surveillance answer: its daily syndrome counts against pandas on its own rows, the visit day
read at ingest, suppression of a clinic's own series at k - 1 and k, the egress guard's check of a
published series, and the site's refusals."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, RecordDict

from federation.surveillance import (
    OUTSIDE,
    VISITS,
    SurveillanceResult,
    SyndromeCounts,
    day_layout,
    decode_sum,
)
from models.spec import load_task
from models.syndromes import match_syndromes
from node_agent.egress import check_reply, release
from node_agent.errors import EgressViolation, PolicyRefusal
from node_agent.ingest import ingest_file
from node_agent.mapping import Mapping, load_mapping
from node_agent.policy import SitePolicy, SurveillancePolicy
from node_agent.store import SiteStore
from node_agent.surveillance import (
    CLINIC_SERIES,
    QUERY_KEY,
    admitted_surveillance,
    answer_surveillance,
    check_clinic_series,
    site_counts,
)
from simulation.synth import ClinicProfile, write_federation

SPEC = load_task("triage_text")
MONDAY = date(2025, 9, 1)


def _policy(**rules) -> SitePolicy:
    return SitePolicy(surveillance=SurveillancePolicy(allowed=True, district="north", **rules))


@pytest.fixture(scope="module")
def exported_site(tmp_path_factory):
    """One synthetic clinic with an influenza-like wave, ingested for a text task."""
    root = tmp_path_factory.mktemp("surveillance-site")
    ((name, path, mapping),) = write_federation(root / "exports", clinics=[ClinicProfile("wave_clinic", 300)], seed=4,
                                                outbreak=None)
    with SiteStore(root / name) as store:
        summary = ingest_file(store, SPEC, path, load_mapping(mapping))
    return root / name, pd.read_csv(path, dtype={"complaint_text": str}), summary


def test_daily_counts_equal_pandas_on_the_export(exported_site):
    site, export, summary = exported_site
    assert summary.undated == 0 and "visit_date" not in summary.ignored_columns
    query = SyndromeCounts(start=MONDAY + timedelta(days=20), end=MONDAY + timedelta(days=80))
    table, rows = site_counts(site, SPEC, query)
    with SiteStore(site, read_only=True) as store:
        stored = set(store.load(SPEC)["record_id"])
    accepted = export[export["encounter_id"].isin(stored)].drop_duplicates("encounter_id")
    assert rows == len(accepted)
    codes = list(query.syndromes)
    expected = np.zeros((len(query.days), len(codes) + 1))
    days = {d.isoformat(): i for i, d in enumerate(query.days)}
    for visit in accepted.to_dict("records"):
        visit = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in visit.items()}
        if visit["visit_date"] not in days:
            continue
        i = days[visit["visit_date"]]
        expected[i, -1] += 1
        for match in match_syndromes(visit):
            expected[i, codes.index(match.syndrome.code)] += 1
    assert (table[:-1] == expected).all()
    assert table[-1, -1] == rows - expected[:, -1].sum()  # outside the window
    assert expected[:, :-1].sum() > 20  # the clinic has syndromes to count


def test_the_district_vector_decodes_to_the_sites_counts_unsuppressed_by_default(exported_site):
    site, _, _ = exported_site
    query = SyndromeCounts(start=MONDAY, end=MONDAY + timedelta(days=27))
    table, rows = site_counts(site, SPEC, query)
    answer = answer_surveillance(site, SPEC, query, _policy(), run_id="r1")
    assert answer.vector.size == day_layout(query).length and answer.counts is None
    counts, flags, decoded_rows = decode_sum(query, answer.vector)
    assert decoded_rows == rows and (counts == table[:-1]).all() and not flags.any()
    # With the site's own k for sums, small cells are zeros there, and the visits line hides >= k rows.
    answer = answer_surveillance(site, SPEC, query, _policy(sum_min_cell=3), run_id="r2")
    counts, flags, _ = decode_sum(query, answer.vector)
    small = (table[:-1] > 0) & (table[:-1] < 3)
    assert flags[small].all() and (counts[flags == 1] == 0).all()
    assert (counts[flags == 0] == table[:-1][flags == 0]).all()


def _one_syndrome_site(tmp_path, per_week: list[int]):
    """A site with ``per_week[w]`` febrile respiratory visits on the Monday of week ``w`` and one other visit a week."""
    rows = []
    for week, n in enumerate(per_week):
        day = (MONDAY + timedelta(days=7 * week)).isoformat()
        rows += [{"complaint": "dyspnoea", "temperature": 38.4, "_visit_date": day}] * n
        rows.append({"complaint": "trauma", "temperature": 36.6, "_visit_date": day})
    frame = pd.DataFrame(rows)
    frame["record_id"] = [f"r{i}" for i in range(len(frame))]
    frame["_visit_date"] = pd.to_datetime(frame["_visit_date"]).dt.date
    with SiteStore(tmp_path / "one") as store:
        store.ensure_task_table(SPEC)
        store.connection.register("rows_frame", frame)
        columns = ", ".join(f'"{c}"' for c in frame.columns)
        store.connection.execute(f"INSERT INTO {store.table_name(SPEC)} ({columns}) SELECT {columns} FROM rows_frame")
    return tmp_path / "one"


@pytest.mark.parametrize("interval", ["week", "day"])
def test_a_clinics_own_series_is_suppressed_at_k_minus_1_and_released_at_k(tmp_path, interval):
    site = _one_syndrome_site(tmp_path, [9, 10, 0, 11])
    query = SyndromeCounts(start=MONDAY, end=MONDAY + timedelta(days=27), syndromes=("febrile_respiratory",))
    answer = answer_surveillance(site, SPEC, query, _policy(clinic_series=interval), run_id="r1")
    assert answer.vector is None and answer.interval == interval
    weekly = answer.counts[:, 0] if interval == "week" else answer.counts[::7, 0]
    flags = answer.suppressed[:, 0] if interval == "week" else answer.suppressed[::7, 0]
    assert weekly.tolist() == [0, 10, 0, 11] and flags.tolist() == [1, 0, 0, 0]
    # The clinic's own k is its policy's (a lower one releases the 9).
    lower = answer_surveillance(site, SPEC, query, _policy(clinic_series=interval, clinic_min_cell=9), run_id="r2")
    assert (lower.counts[:, 0] if interval == "week" else lower.counts[::7, 0]).tolist() == [9, 10, 0, 11]


def _series_reply(counts, flags, interval="week", message_type="query.surveillance") -> Message:
    metadata = Metadata(run_id=1, message_id="", src_node_id=7, dst_node_id=0, reply_to_message_id="m",
                        group_id="", created_at=0.0, ttl=60.0, message_type=message_type)
    content = {CLINIC_SERIES: ArrayRecord({"counts": Array(np.array(counts, dtype=float)),
                                           "suppressed": Array(np.array(flags, dtype=float))}),
               "site": ConfigRecord({"site-id": "one", "district": "north", "series-interval": interval})}
    return Message(content=RecordDict(content), metadata=metadata)


def test_the_egress_guard_lets_a_published_series_out_only_as_the_policy_says():
    publishing = _policy(clinic_series="week")
    good = _series_reply([[0.0], [10.0], [0.0], [11.0]], [[1.0], [0.0], [0.0], [0.0]])
    check_reply(good)
    release(good, publishing)
    with pytest.raises(EgressViolation, match="below this site's k"):
        release(_series_reply([[9.0], [10.0]], [[0.0], [0.0]]), publishing)
    with pytest.raises(EgressViolation, match="publishes no week series"):
        release(good, _policy())  # the default: no series of its own
    with pytest.raises(EgressViolation, match="publishes no day series"):
        release(_series_reply([[10.0]], [[0.0]], interval="day"), publishing)
    with pytest.raises(EgressViolation, match="flags a count"):
        check_clinic_series(_series_reply([[10.0]], [[1.0]]), publishing)
    with pytest.raises(EgressViolation, match="in a train reply"):
        check_clinic_series(_series_reply([[10.0]], [[0.0]], message_type="train"), publishing)


def test_the_site_declines_unless_its_policy_allows_surveillance_in_a_district():
    config = {QUERY_KEY: SyndromeCounts(start=MONDAY, end=MONDAY).model_dump_json()}
    with pytest.raises(PolicyRefusal, match="not allowed by this site's policy"):
        admitted_surveillance(SitePolicy(), SPEC, config)
    with pytest.raises(PolicyRefusal, match="names no district"):
        admitted_surveillance(SitePolicy(surveillance=SurveillancePolicy(allowed=True)), SPEC, config)
    other_table = SyndromeCounts(start=MONDAY, end=MONDAY, syndromes=("x",), table_version="1999.1")
    with pytest.raises(PolicyRefusal, match="syndrome table 1999.1"):
        admitted_surveillance(_policy(), SPEC, {QUERY_KEY: other_table.model_dump_json()})
    assert admitted_surveillance(_policy(), SPEC, config).start == MONDAY


def test_a_visit_day_is_read_in_the_usual_spellings_and_counted_when_missing(tmp_path):
    spec = load_task("triage")
    export = tmp_path / "visits.csv"
    export.write_text("encounter_id,age,sex,complaint,triage_level,visit_date\n"
                      "a,40,F,fever,3,2025-09-01\nb,41,M,fever,3,2025/09/02\nc,42,F,fever,3,2025-09-03 08:15:00\n"
                      "d,43,M,fever,3,not a day\ne,44,F,fever,3,\n", encoding="utf-8")
    with SiteStore(tmp_path / "site") as store:
        summary = ingest_file(store, spec, export, Mapping())
        days = store.connection.execute(f"SELECT record_id, CAST(_visit_date AS VARCHAR) FROM "
                                        f"{store.table_name(spec)} ORDER BY record_id").fetchall()
    assert summary.accepted == 5 and summary.undated == 2 and summary.quarantined == 0
    assert days == [("a", "2025-09-01"), ("b", "2025-09-02"), ("c", "2025-09-03"), ("d", None), ("e", None)]


def test_weekly_district_series_add_up_the_days_and_the_published_weeks():
    query = SyndromeCounts(start=MONDAY, end=MONDAY + timedelta(days=15), syndromes=("fever_rash",))
    daily = np.zeros((16, 2))
    daily[:, 0], daily[:, 1] = np.arange(16), 10
    from federation.surveillance import ClinicRelease

    result = SurveillanceResult(query, sums={"north": (daily, np.zeros_like(daily), ["a", "b", "c"])},
                                clinics={"d": ClinicRelease("d", "north", "week", np.array([[10.0], [0.0]]),
                                                            np.array([[0.0], [1.0]]))})
    (district_days,) = [b for b in result.series("day") if b.level == "district"]
    assert district_days.sites == ["a", "b", "c"] and district_days.counts[:, 0].tolist() == list(range(16))
    week = {b.unit: b for b in result.series("week")}
    assert week["north"].periods == ["2025-W36", "2025-W37"]  # the third week is not whole: left out
    assert week["north"].counts[:, 0].tolist() == [21 + 10, 70 + 0] and week["north"].suppressed[:, 0].tolist() == [0, 1]
    assert week["north"].sites == ["a", "b", "c", "d"] and week["d"].level == "clinic"
    frame = result.to_frame("week")
    assert set(frame["unit"]) == {"north", "d"} and frame["count"].sum() == 31 + 70 + 10
    assert day_layout(query).cells[1] == (MONDAY.isoformat(), VISITS) and day_layout(query).cells[-1] == (OUTSIDE, "")


def test_the_site_admin_sets_the_surveillance_policy_from_the_cli(tmp_path):
    from typer.testing import CliRunner

    from fenji.cli import app
    from models.errors import ExitCode
    from node_agent.budget import node_audit
    from node_agent.policy import load_site_policy

    site = tmp_path / "clinic"
    site.mkdir()
    runner = CliRunner()
    result = runner.invoke(app, ["node", "surveillance", "--site-dir", str(site), "--allow", "--district", "north",
                                 "--clinic-series", "week", "--by", "admin"])
    assert result.exit_code == 0, result.output
    rules = load_site_policy(site).surveillance
    assert (rules.allowed, rules.district, rules.clinic_series, rules.clinic_min_cell) == (True, "north", "week", 10)
    (entry,) = [e["details"] for e in node_audit(site).entries() if e["action"] == "policy-changed"]
    assert entry["new"] == {"allowed": True, "district": "north", "clinic_series": "week"}
    bad = runner.invoke(app, ["node", "surveillance", "--site-dir", str(site), "--district", "North District!"])
    assert bad.exit_code == ExitCode.SITE_DATA and load_site_policy(site).surveillance.district == "north"
