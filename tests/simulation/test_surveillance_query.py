"""Syndromic surveillance on Flower's real simulation engine, with the key holder as its own service: a
district's daily series equal the same counts on the pooled rows of its clinics (pooled here, in the
test only), a clinic that publishes its own series leaves the sum and its small weeks stay home, a
clinic whose policy disallows surveillance declines, and a district with too few clinics gets no sum."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from federation.audit import AuditLog
from federation.surveillance import SyndromeCounts, periods
from keyholder.state import KeyHolderState
from models.spec import load_task
from models.syndromes import match_syndromes
from node_agent.budget import node_audit
from node_agent.ingest import ingest_file
from node_agent.mapping import load_mapping
from node_agent.store import SiteStore
from simulation.outbreak import SERIES_START, Outbreak
from simulation.surveillance import (
    allow_surveillance_at_sites,
    run_simulated_surveillance,
)
from simulation.synth import ClinicProfile, write_federation

SPEC = load_task("triage_text")
CLINICS = [ClinicProfile("sv_a", 220), ClinicProfile("sv_b", 180, age_mean=30), ClinicProfile("sv_c", 160),
           ClinicProfile("sv_d", 400, export="gbk-semicolon"), ClinicProfile("sv_e", 120), ClinicProfile("sv_f", 120)]
DISTRICTS = {"sv_a": "north", "sv_b": "north", "sv_c": "north", "sv_d": "north", "sv_e": "south", "sv_f": "south"}
QUERY = SyndromeCounts(start=SERIES_START + timedelta(days=7), end=SERIES_START + timedelta(days=62))


@pytest.fixture(scope="module")
def answered(tmp_path_factory):
    root = tmp_path_factory.mktemp("surveillance")
    sites = []
    wave = Outbreak(clinics=("sv_d",), start_day=30, visits=40)  # weeks at sv_d above its k
    for name, path, mapping in write_federation(root / "exports", clinics=CLINICS, seed=5, outbreak=wave):
        with SiteStore(root / "sites" / name) as store:
            ingest_file(store, SPEC, path, load_mapping(mapping))
        sites.append(root / "sites" / name)
    allow_surveillance_at_sites([s for s in sites if s.name != "sv_e"], SPEC, DISTRICTS, clinic_series={"sv_d": "week"})
    from simulation.engine import approve_at_sites

    approve_at_sites([root / "sites" / "sv_e"], SPEC, rounds=1)  # its plan approved, surveillance not allowed
    home, audit = root / "keyholder", root / "coordinator-audit.jsonl"
    result = run_simulated_surveillance(QUERY, sites, task=SPEC, keyholder_home=home, audit_log=audit)
    return result, {s.name: s for s in sites}, home, audit


def _pooled_daily(site_dirs) -> np.ndarray:
    """Days x (syndromes + visits) over the clinics' stored rows, counted here with pandas."""
    codes, days = list(QUERY.syndromes), {d.isoformat(): i for i, d in enumerate(QUERY.days)}
    counts = np.zeros((len(days), len(codes) + 1))
    for site in site_dirs:
        with SiteStore(site, read_only=True) as store:
            rows = store.connection.execute(f"SELECT complaint, temperature, complaint_text, CAST(_visit_date AS "
                                            f"VARCHAR) FROM {store.table_name(SPEC)}").df()
        rows.columns = ["complaint", "temperature", "complaint_text", "day"]
        for visit in rows.to_dict("records"):
            if visit["day"] not in days:
                continue
            visit = {k: None if v is None or (isinstance(v, float) and np.isnan(v)) else v for k, v in visit.items()}
            counts[days[visit["day"]], -1] += 1
            for match in match_syndromes(visit):
                counts[days[visit["day"]], codes.index(match.syndrome.code)] += 1
    return counts


def test_the_district_series_equals_the_pooled_rows_of_the_clinics_in_its_sum(answered):
    result, sites, _, _ = answered
    summed, flags, cohort = result.sums["north"]
    assert cohort == ["sv_a", "sv_b", "sv_c"]  # sv_d publishes its own series instead
    pooled = _pooled_daily([sites[s] for s in cohort])
    assert (summed == pooled).all() and not flags.any()
    assert pooled[:, :-1].sum() > 30  # syndromes to count
    (north,) = [b for b in result.series("day") if b.unit == "north"]
    assert north.counts.tolist() == pooled[:, :-1].tolist() and north.visits.tolist() == pooled[:, -1].tolist()


def test_a_clinic_publishing_its_own_weeks_is_suppressed_below_its_k_and_added_to_the_districts_weeks(answered):
    result, sites, _, _ = answered
    release = result.clinics["sv_d"]
    assert release.interval == "week" and release.district == "north"
    spans = periods(QUERY, "week")
    own = _pooled_daily([sites["sv_d"]])[:, :-1]
    weekly = np.array([own[idx].sum(axis=0) for _, idx in spans])
    small = (weekly > 0) & (weekly < 10)
    assert small.any() and (weekly >= 10).any()
    assert (release.counts == np.where(small, 0, weekly)).all() and (release.suppressed == small).all()
    week = {b.unit: b for b in result.series("week")}
    others = _pooled_daily([sites[s] for s in ("sv_a", "sv_b", "sv_c")])[:, :-1]
    assert week["north"].sites == ["sv_a", "sv_b", "sv_c", "sv_d"]
    assert (week["north"].counts == np.array([others[idx].sum(axis=0) for _, idx in spans]) + release.counts).all()
    assert (week["north"].suppressed == small).all()
    # The daily district series cannot hold a clinic that published weeks only.
    assert [b.sites for b in result.series("day") if b.unit == "north"] == [["sv_a", "sv_b", "sv_c"]]


def test_a_clinic_that_disallows_surveillance_declines_and_a_district_short_of_clinics_gets_no_sum(answered):
    result, sites, home, audit = answered
    assert "not allowed by this site's policy" in result.refused["sv_e"]
    assert "south" not in result.sums and "min-sites" in result.unavailable["south"]
    refused = [e for e in node_audit(sites["sv_e"]).entries() if e["action"] == "job-refused"]
    assert refused and refused[-1]["details"]["phase"] == "surveillance"
    released = [e["details"] for e in node_audit(sites["sv_d"]).entries() if e["action"] == "surveillance-released"]
    assert released[-1]["release"] == "clinic-series" and released[-1]["k"] == 10
    # The key holder decrypted one sum, north's, over its three clinics; south's was never asked for.
    decrypts = [e["details"] for e in KeyHolderState(home).ledger.entries() if e["action"] == "decrypt"]
    assert [(d["query"].split("|")[1], d["cohort"]) for d in decrypts] == [("surveillance:north",
                                                                           ["sv_a", "sv_b", "sv_c"])]
    (entry,) = [e["details"] for e in AuditLog(audit).entries() if e["action"] == "surveillance-query"]
    assert entry["districts"] == {"north": ["sv_a", "sv_b", "sv_c"]} and entry["published"] == {"sv_d": "week"}
    frame = result.to_frame("day")
    assert isinstance(frame, pd.DataFrame) and set(frame["unit"]) == {"north"}
