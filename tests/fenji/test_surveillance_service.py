"""Syndromic surveillance through the coordinator's API, the SDK and the console, against a real coordinator on
uvicorn whose worker runs the query on Flower's real simulation engine over the eight synthetic clinics
(with their influenza-like wave at two neighbours): the district series come back as DataFrames with
each detector's alarms, the top alert is the wave, refusals are the SDK's errors, every run is in the
audit trail; and the console's surveillance view in Debian's Chromium (saves docs/console-surveillance.png)."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from coordinator.service import create_app
from fenji.jobs_runner import SimulationRunner
from fenji_sdk import Client, Forbidden, Invalid, SurveillanceRun
from models.spec import load_task
from node_agent.ingest import ingest_file
from node_agent.mapping import load_mapping
from node_agent.store import SiteStore
from simulation.outbreak import DEFAULT_OUTBREAK, SERIES_DAYS, SERIES_START
from simulation.synth import NEIGHBOURS, write_federation
from tests.coordinator.service.conftest import make_service, registry_file  # noqa: F401  (a fixture)
from tests.servers import running

TASK = "triage"
START, END = SERIES_START, SERIES_START + timedelta(days=SERIES_DAYS - 1)
WAVE_FIRST = SERIES_START + timedelta(days=DEFAULT_OUTBREAK.start_day)
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def surveillance_service(tmp_path_factory, registry_file):  # noqa: F811
    root = tmp_path_factory.mktemp("surveillance-service")
    spec = load_task(TASK)
    for name, path, mapping in write_federation(root / "exports", seed=0):
        with SiteStore(root / "sites" / name) as store:
            ingest_file(store, spec, path, load_mapping(mapping))
    service = make_service(root / "home", registry_file)
    service.sites = root / "sites"
    service.coordinator.jobs.start(SimulationRunner(root / "sites", keyholder_home=root / "keyholder"))
    with running(create_app(service.coordinator)) as service.base_url:
        with Client(service.base_url, service.tokens["commissioner"]) as commission:
            service.run = commission.surveillance(TASK, START, END, poll=0.5, timeout=600)
        yield service
    service.coordinator.jobs.stop(timeout=120)


def test_the_run_comes_back_as_district_series_with_each_detectors_alarms(surveillance_service):
    run = surveillance_service.run
    assert isinstance(run, SurveillanceRun) and run.method == "C2"
    assert run.result["districts"] == {"inner_city": ["clinic_01_urban", "clinic_02_elderly", "clinic_03_industrial",
                                                      "clinic_07_paediatric_mix"],
                                       "outer_suburbs": ["clinic_04_rural_no_oximeter", "clinic_05_suburban",
                                                         "clinic_06_township", "clinic_08_small_village"]}
    daily, weekly = run.series("day"), run.series("week")
    assert set(daily["unit"]) == {"inner_city", "outer_suburbs"} and len(daily) == 2 * SERIES_DAYS * 5
    assert {"C1", "C2", "C3", "upperbound", "visits"} <= set(daily.columns) and (daily["suppressed"] == 0).all()
    assert len(weekly) == 2 * (SERIES_DAYS // 7) * 5
    # The weeks add up the days; the visits of the days add up to every dated visit of the triage task.
    north = daily[daily["unit"] == "outer_suburbs"].groupby("syndrome")["count"].sum()
    assert (weekly[weekly["unit"] == "outer_suburbs"].groupby("syndrome")["count"].sum() == north).all()
    rows = 0
    for site in sorted(surveillance_service.sites.iterdir()):
        with SiteStore(site, read_only=True) as store:
            rows += store.count(load_task(TASK))
    assert daily.drop_duplicates(["unit", "period"])["visits"].sum() == rows


def test_the_top_alert_is_the_wave_in_its_district(surveillance_service):
    alerts = surveillance_service.run.alerts()
    assert not alerts.empty and (alerts["method"] == "C2").all()
    top = alerts.iloc[0]
    assert top["unit"] == "outer_suburbs" and top["syndrome"] in ("undifferentiated_fever", "febrile_respiratory")
    assert top["period"] >= WAVE_FIRST.isoformat() or top["interval"] == "week"
    assert set(NEIGHBOURS) <= set(top["sites"])
    daily = alerts[alerts["interval"] == "day"]
    assert len(daily) <= 10 and daily["severity"].is_monotonic_decreasing


def test_refusals_are_sdk_errors_and_every_run_is_audited(surveillance_service):
    service = surveillance_service
    with Client(service.base_url, service.tokens["admin"]) as admin:
        with pytest.raises(Forbidden):
            admin.submit_surveillance(TASK, START, END)
        trail = admin.audit(limit=1000)
        runs = admin.surveillance_runs()
    with Client(service.base_url, service.tokens["data_scientist"]) as scientist:
        with pytest.raises(Invalid, match="not in the syndrome table"):
            scientist.submit_surveillance(TASK, START, END, syndromes=["cholera"])
        with pytest.raises(Invalid, match="between 1 and 371"):
            scientist.submit_surveillance(TASK, START, START + timedelta(days=400))
    actions = trail[trail["action"].str.startswith("query-")]
    assert actions["action"].tolist()[:3] == ["query-submitted", "query-started", "query-succeeded"]
    assert actions["actor"].tolist()[0] == "test commissioner"
    assert runs["id"].tolist()[0] == service.run.id and runs["status"].tolist()[0] == "succeeded"
    assert np.isclose(service.run.alerts(method="C1")["severity"].iloc[0] > 0, True)


sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_the_console_shows_the_series_and_the_ranked_alerts(surveillance_service):
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium not installed (apt-get install chromium; .ci/run does it)")
    service, foreign, errors = surveillance_service, [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1366, "height": 900}, base_url=service.base_url,
                                      locale="en-US")
        context.route("**/*", lambda route: (route.continue_() if route.request.url.startswith(service.base_url)
                                             else (foreign.append(route.request.url), route.abort())))
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto("/")
        page.fill("#token-input", service.tokens["commissioner"])
        page.click("#login-button")
        page.click("#view-surveillance")
        page.wait_for_selector("#sv-alerts tbody tr")
        # Chinese first: the view's texts, the syndromes by their table's Chinese names.
        assert page.inner_text("#surveillance-view h2") == "预警（按严重程度排序）"
        first = page.locator("#sv-alerts tbody tr").first
        assert "outer_suburbs" in first.inner_text() and ("发热" in first.inner_text())
        # The top alert's series is drawn, with its bound and its alarms marked.
        assert page.locator("#sv-chart svg polyline.sv-counts").count() == 1
        assert page.locator("#sv-chart svg circle.sv-alarm").count() >= 1
        page.screenshot(path=str(DOCS / "console-surveillance.png"), full_page=True)
        page.click("#lang-toggle")
        assert page.inner_text("#surveillance-view h2") == "Alerts (worst first)"
        page.select_option("#sv-interval", "week")
        page.wait_for_selector("#sv-chart svg polyline.sv-counts")
        page.select_option("#sv-method", "C1")
        page.select_option("#sv-interval", "day")
        page.locator("#sv-alerts tbody tr").first.click()
        page.wait_for_selector("#sv-chart svg circle.sv-alarm")
        assert "C1 alarm" in page.locator("#sv-chart svg").text_content()
        # A data scientist may run surveillance too; the run form is there for both.
        assert page.locator("#sv-run").is_enabled()
        context.close()
        browser.close()
    assert foreign == [] and errors == []


def test_the_demo_prints_the_wave_as_its_top_alert(surveillance_service, tmp_path, capsys):
    from coordinator.settings import load_coordinator_settings
    from federation.audit import AuditLog
    from fenji.demo_surveillance import show_surveillance

    settings = load_coordinator_settings(home=str(tmp_path / "home"))
    report = show_surveillance(sorted(surveillance_service.sites.iterdir()), [load_task(TASK)], settings)
    printed = capsys.readouterr().out
    assert "inner_city: one sum over 4 clinics" in printed and "outer_suburbs: one sum over 4 clinics" in printed
    top = next(line for line in printed.splitlines() if line.strip().startswith("│ 1 "))
    assert "outer_suburbs" in top and "fever" in top and report["method"] == "C2"
    (entry,) = [e for e in AuditLog(settings.audit_path).entries() if e["action"] == "surveillance-query"]
    assert sorted(entry["details"]["districts"]) == ["inner_city", "outer_suburbs"]
