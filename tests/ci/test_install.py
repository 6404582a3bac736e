"""What CI tests is what a new user installs: the README's test command, every package pinned."""

from __future__ import annotations

import re
import subprocess
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_ci_runs_the_readme_test_command_in_a_fresh_virtualenv():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).splitlines()
    extracted = subprocess.run(
        ["awk", r'/^```bash$/ {inside=1; n=0; next} inside && /^```$/ {exit} inside {n++; if (n > 1) print}',
         "README.md"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    assert extracted == block[1:] and any("python -m pytest" in line for line in extracted)
    assert all("-c constraints.txt" in line for line in block if "pip install" in line)
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'python3 -m venv "$tmp/venv"' in ci and '. "$tmp/venv/bin/activate"' in ci and "mktemp -d" in ci
    assert 'bash -euo pipefail -c "$demo_command"' in ci and 'bash -euo pipefail -c "$test_command"' in ci


def test_every_dependency_and_test_tool_is_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    pins = _constraints()
    missing = [r for r in wanted if canonicalize_name(Requirement(r).name) not in pins]
    assert not missing, f"not pinned in constraints.txt: {missing}"
    assert pins["torch"] == "2.13.0" and pins["flwr"] == "1.41.0"
    for req in map(Requirement, wanted):
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), (req, pins[canonicalize_name(req.name)])


def test_this_environment_is_the_pinned_one():
    """The suite runs on exactly the pinned set (a stray upgrade would show here first)."""
    pins = _constraints()
    drift = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in pins and dist.version.split("+")[0] != pins[name]:
            drift[name] = (dist.version, pins[name])
    assert not drift, f"installed versions differ from constraints.txt: {drift}"
