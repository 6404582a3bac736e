"""Shared fixtures: real DuckDB site stores under tmp_path, built from small synthetic clinics."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from federation.settings import configure_environment

configure_environment()

from models.spec import load_task  # noqa: E402
from node_agent.ingest import ingest_file  # noqa: E402
from node_agent.mapping import load_mapping  # noqa: E402
from node_agent.store import SiteStore  # noqa: E402
from simulation.synth import ClinicProfile, write_federation  # noqa: E402

SHARED_DATA = Path(os.environ.get("FENJI_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

SMALL_CLINICS = [
    ClinicProfile("site_a", 260, age_mean=45),
    ClinicProfile("site_b", 200, age_mean=70, severity_shift=0.3),
    ClinicProfile("site_c_no_spo2", 160, never_records=["spo2"], label_offset=0.4),
    ClinicProfile("site_d_gbk", 140, export="gbk-semicolon"),
]


@pytest.fixture(scope="session")
def referral_spec():
    return load_task("referral_risk")


@pytest.fixture(scope="session")
def pristine_federation(tmp_path_factory, referral_spec) -> list[Path]:
    """Four small synthetic clinics, each ingested into its own DuckDB file, that no test changes:
    copy a site from here (``shutil.copytree``) when a test counts the site's own decisions."""
    root = tmp_path_factory.mktemp("pristine-federation")
    sites = []
    for name, path, mapping in write_federation(root / "exports", clinics=SMALL_CLINICS, seed=7):
        with SiteStore(root / "sites" / name) as store:
            ingest_file(store, referral_spec, path, load_mapping(mapping))
        sites.append(root / "sites" / name)
    return sites


@pytest.fixture(scope="session")
def small_federation(tmp_path_factory, pristine_federation) -> list[Path]:
    """The same four clinics, shared by the session's tests: runs on them leave approvals, audit
    entries and budget charges behind, so a test that counts those copies `pristine_federation`."""
    root = tmp_path_factory.mktemp("federation")
    shutil.copytree(pristine_federation[0].parent.parent, root, dirs_exist_ok=True)
    return [root / "sites" / site.name for site in pristine_federation]


@pytest.fixture()
def site(pristine_federation, tmp_path) -> Path:
    """A copy of site_a (260 rows) as a site that never took part in a job: no policy (so no approved
    plan), no audit log, no privacy budget spent. A test module with a ``site`` of its own uses that."""
    from tests.attacks.conftest import fresh_sites

    (copy,) = fresh_sites(pristine_federation[:1], tmp_path / "sites")
    return copy


@pytest.fixture()
def site_store(tmp_path):
    with SiteStore(tmp_path / "site") as store:
        yield store


def require_shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data set not found at {path} (set FENJI_DATA_DIR)")
    return path


@pytest.fixture()
def enrolled_key_holder(tmp_path):
    """``make(n_sites=3, min_sites=3)`` -> (KeyHolder, {site id: Enrolment}): a real key holder folder
    under tmp_path with ``n_sites`` enrolled sites ``site_0``, ``site_1``…"""
    from keyholder import KeyHolder, KeyHolderState

    def make(n_sites: int = 3, min_sites: int = 3, home: Path | None = None):
        state = KeyHolderState(home or tmp_path / "keyholder")
        state.init()
        enrolments = {f"site_{i}": state.enrol(f"site_{i}", f"INST-{i}") for i in range(n_sites)}
        return KeyHolder(state, min_sites=min_sites), enrolments

    return make
