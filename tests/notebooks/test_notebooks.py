"""The notebooks in ``notebooks/``, executed top to bottom in a real Jupyter kernel (nbclient) against a
real coordinator on uvicorn whose worker runs Flower's simulation over four small synthetic clinics; and
kept in git without outputs (a notebook's outputs would carry whatever the author's coordinator said)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from coordinator.service import create_app
from fenji.jobs_runner import SimulationRunner
from tests.coordinator.service.conftest import make_service, registry_file  # noqa: F401  (a fixture)
from tests.servers import running

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == ["01-quickstart.ipynb", "02-federated-statistics.ipynb",
                                           "03-training.ipynb", "04-governance.ipynb", "05-surveillance.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_kept_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (path.name, cell.source[:60])


@pytest.fixture(scope="module")
def coordinator_url(tmp_path_factory, small_federation, registry_file):  # noqa: F811
    """A coordinator with a data scientist's account, its jobs and queries run over the small clinics."""
    root = tmp_path_factory.mktemp("notebooks")
    for site in small_federation:
        shutil.copytree(site, root / "sites" / site.name)
    service = make_service(root / "home", registry_file)
    service.coordinator.jobs.start(SimulationRunner(root / "sites", keyholder_home=root / "keyholder",
                                                    tracking_uri=service.coordinator.registry.tracking_uri))
    with running(create_app(service.coordinator)) as url:
        yield url, service.tokens["data_scientist"]
    service.coordinator.jobs.stop(timeout=120)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_against_a_real_coordinator(path, coordinator_url, monkeypatch):
    url, token = coordinator_url
    monkeypatch.setenv("FENJI_URL", url)
    monkeypatch.setenv("FENJI_TOKEN", token)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the repository first: the kernel imports the packages from this tree, as a notebook user's install would
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
              if o.output_type == "error"]
    assert errors == []
    last = notebook.cells[-1]
    assert last.execution_count is not None  # every cell ran, the last included
