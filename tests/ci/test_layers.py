"""The layers are a contract CI checks: import-linter's contracts in pyproject.toml hold, and they
would fail on an upward import (shown with a throw-away module)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "models" / "_upward_import_probe.py"  # never committed (.gitignore)


def _lint_imports() -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    return subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_layer_contracts_hold():
    result = _lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("target", "contract"), [
    ("node_agent.store", "Layers: shells > parties > protocol > models"),
    ("mlflow", "models is ML only"),
])
def test_an_upward_or_foreign_import_breaks_a_contract(target, contract):
    PROBE.write_text(f'"""A probe the layer test writes and removes."""\n\nimport {target}  # noqa: F401\n')
    try:
        result = _lint_imports()
    finally:
        PROBE.unlink()
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout


def test_one_party_importing_another_breaks_independence():
    probe = ROOT / "keyholder" / "_upward_import_probe.py"
    probe.write_text('"""A probe the layer test writes and removes."""\n\nimport coordinator.audit  # noqa: F401\n')
    try:
        result = _lint_imports()
    finally:
        probe.unlink()
    assert result.returncode != 0 and "independent of each other BROKEN" in result.stdout


PACKAGES = ("models", "federation", "node_agent", "coordinator", "keyholder", "simulation", "bench", "fenji", "fenji_sdk")


def test_no_import_cycle():
    import grimp

    graph = grimp.build_graph(*PACKAGES)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                cycles.append((module, imported))
    assert not cycles, f"import cycles: {cycles}"


def test_modules_stay_small():
    """A module past ~400 lines is a sign to split it (STYLE.md)."""
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    assert not {path: n for path, n in sizes.items() if n > 400}, sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
