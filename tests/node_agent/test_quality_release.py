"""The decision-quality review on its way out of the clinic (issue 16). The suppressed, rounded counts a
site releases (``node_agent.quality.released_review``, sent as ``quality-*`` numbers of its site report)
reach the coordinator's site report after a real job (the coordinator service on uvicorn, its worker
running Flower's simulation engine over four clinics); a site whose counts are all below its minimum n
sends none. ``fenji node quality`` shows the site admin the full review, or with ``--release`` only what
may leave, and says clearly when ``--site-dir`` is not a site."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from coordinator.service import create_app
from fenji.cli import app as fenji_app
from fenji.jobs_runner import SimulationRunner
from node_agent.quality import COUNTS, RATES, released_review, review
from node_agent.store import SiteStore
from tests.coordinator.service.conftest import make_service, registry_file  # noqa: F401  (a fixture)
from tests.coordinator.service.test_jobs import submit, wait_for
from tests.fenji.test_cli_errors import assert_one_error_line
from tests.node_agent.serve.test_followup_quality import VISITS, open_clinic
from tests.servers import running

TASK = "referral_risk"
FEW = [("refer", "county", "0", 4), ("treat_here", None, "1", 3)]  # every count below the default min n (10)


def released_numbers(site) -> dict[str, float]:
    """The review's released counts and rates (suppressed ones left out), as the coordinator should show them."""
    released = released_review(site)
    return {name: float(released[name]) for name in (*COUNTS, *RATES) if released[name] is not None}


@pytest.fixture(scope="module")
def federation(tmp_path_factory, pristine_federation, registry_file):  # noqa: F811
    """Four clinics after one training job: site_b with the doctors' decisions of the quality review's
    test, site_d with a few (all below min n), the others with none; yields the service, the sites and the job."""
    root = tmp_path_factory.mktemp("quality-release")
    sites = {}
    for source in pristine_federation:
        sites[source.name] = root / "sites" / source.name
        shutil.copytree(source, sites[source.name])
    busy, quiet = pristine_federation[1].name, pristine_federation[3].name
    open_clinic(sites[busy], VISITS)
    open_clinic(sites[quiet], FEW)
    service = make_service(root / "home", registry_file)
    service.coordinator.jobs.start(SimulationRunner(root / "sites", keyholder_home=root / "keyholder",
                                                    tracking_uri=service.coordinator.registry.tracking_uri))
    try:
        with running(create_app(service.coordinator)) as service.base_url:
            job = wait_for(service, submit(service, task=TASK, rounds=1)["id"], deadline=900)
            assert job["status"] == "succeeded", job
            yield service, sites, busy, quiet, job
    finally:
        service.coordinator.jobs.stop(timeout=120)


def test_the_released_quality_numbers_reach_the_coordinators_site_report(federation):
    service, sites, busy, quiet, job = federation
    expected = released_numbers(sites[busy])
    # Released above min n, rounded; the 3 under-referrals stay at the clinic.
    assert expected["decisions"] == 55.0 and expected["over_referral"] == 10.0
    assert "under_referral" not in expected and "under_referral_rate" not in expected
    with service.client("commissioner") as client:
        listed = {s["site"]: s for s in client.get("/api/v1/sites").json()}
    assert sorted(listed) == sorted(sites)
    report = listed[busy]["report"]
    assert report is not None and report["job_id"] == job["id"] and report["task"] == TASK
    assert report["quality"] == expected
    # A site whose every count is below its min n sends no quality number; nor does one without decisions.
    assert released_numbers(sites[quiet]) == {}
    for name, site in listed.items():
        if name != busy:
            assert site["report"] is not None and site["report"]["rows"] is not None, name
            assert site["report"]["quality"] is None, name
    with service.client("data_scientist") as client:  # the commission's review: withheld from others
        theirs = client.get(f"/api/v1/sites/{busy}").json()
    assert theirs["report"]["quality"] is None and theirs["withheld"] == ["quality"]


def test_fenji_node_quality_shows_the_full_review_and_with_release_only_what_may_leave(tmp_path):
    site, _, _ = open_clinic(tmp_path / "clinic_q", VISITS)
    full = CliRunner().invoke(fenji_app, ["node", "quality", "--site-dir", str(site)])
    assert full.exit_code == 0, full.output
    shown = json.loads(full.stdout)
    with SiteStore(site, read_only=True) as store:
        assert shown == review(store.connection).model_dump(mode="json")
    assert (shown["decisions"], shown["over_referral"], shown["under_referral"]) == (53, 12, 3)  # exact, at home
    kinds = [case["kind"] for case in shown["cases"]]
    assert (kinds.count("over_referral"), kinds.count("under_referral")) == (12, 3)
    assert all(case["encounter_id"].startswith("MZ-") for case in shown["cases"])

    released = CliRunner().invoke(fenji_app, ["node", "quality", "--site-dir", str(site), "--release"])
    assert released.exit_code == 0, released.output
    out = json.loads(released.stdout)
    assert out == released_review(site)
    assert (out["decisions"], out["over_referral"], out["under_referral"]) == (55, 10, None)
    assert "under_referral" in out["suppressed"] and "cases" not in out and "MZ-" not in released.stdout


@pytest.mark.parametrize(("make", "says"), [
    (lambda tmp: tmp / "no_such_site", "no site folder"),
    (lambda tmp: (tmp / "a_file").write_text("x") and tmp / "a_file", "is a file, not a folder"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "no site store at"),
])
def test_fenji_node_quality_says_clearly_when_the_site_dir_is_not_a_site(tmp_path, make, says):
    site_dir = make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(fenji_app, ["node", "quality", "--site-dir", str(site_dir)])
    line = assert_one_error_line(result, says=says)
    assert str(site_dir) in line
    assert sorted(tmp_path.rglob("*")) == before  # nothing created on the way
