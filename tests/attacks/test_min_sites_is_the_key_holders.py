"""Attack 1: the simulation lowers min-sites to the number of site folders.

On the old main, ``fenji sim`` set min-sites to ``min(FENJI_MIN_SITES, number of site folders)``
(and took ``--min-sites`` from the command line): over 2 site folders it decrypted 2-site sums, from
which each site can subtract its own update and read the other's; over 1 folder it decrypted a
single site's update, with ``FENJI_MIN_SITES=3`` set. Now min-sites is the key holder's setting
alone: ``fenji sim`` stops before anything runs when there are fewer site folders than the key
holder's min-sites, and the ``--min-sites`` flag is refused with a message saying why.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from federation.audit import AuditLog
from fenji.cli import app
from tests.attacks.conftest import copy_sites


def _sim(sites: Path, home: Path, *extra: str):
    return CliRunner().invoke(app, ["sim", "--task", "referral_risk", "--sites-dir", str(sites), "--rounds", "1",
                                    "--no-register", *extra],
                              env={"FENJI_HOME": str(home), "FENJI_MIN_SITES": "3", "FENJI_KEYHOLDER_HOME": None})


def _decrypt_entries(root: Path) -> list[dict]:
    """Every decryption any key holder under ``root`` granted (its ledger's "decrypt" entries)."""
    return [entry for ledger in root.rglob("ledger.jsonl") for entry in AuditLog(ledger).entries()
            if entry["action"] == "decrypt"]


@pytest.mark.parametrize("n_sites", [2, 1])
def test_sim_over_fewer_sites_than_the_key_holders_min_sites_stops(n_sites, small_federation, tmp_path):
    sites = tmp_path / "sites"
    copy_sites(small_federation[:n_sites], sites)
    result = _sim(sites, tmp_path / "home")
    assert result.exit_code != 0, result.output
    assert "min_sites" in result.stderr.lower().replace("-", "_"), result.stderr
    assert _decrypt_entries(tmp_path) == []


def test_the_min_sites_flag_cannot_lower_it(small_federation, tmp_path):
    sites = tmp_path / "sites"
    copy_sites(small_federation[:2], sites)
    result = _sim(sites, tmp_path / "home", "--min-sites", "1")
    assert result.exit_code != 0, result.output
    assert "--min-sites is gone" in result.stderr and "key holder" in result.stderr, result.stderr
    assert _decrypt_entries(tmp_path) == []
