"""Attack 6: differencing across runs.

Each run's decrypted statistics are published with its model (``encoding.json``). On the old main a
coordinator ran the same task twice, once with a site and once without: both runs decrypted their
statistics (each over at least min-sites sites), and the difference of the two sets of sums is that
one site's counts, sums and sums of squares. Now the key holder keeps a cohort ledger across runs
(its folder outlives them) and refuses a decryption whose cohort differs from an earlier granted
cohort of the same kind of query by fewer than min-sites sites: the second run stops at its
statistics phase, and the ledger records the refusal.

Two real simulations (one round each) share one key holder folder.
"""

from __future__ import annotations

import pytest

from federation.errors import PrivacyError
from keyholder import KeyHolderState
from simulation.engine import run_simulated_federation
from tests.attacks.conftest import actions, copy_sites


def test_a_second_run_without_one_site_is_refused_at_its_statistics(small_federation, referral_spec, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("FENJI_MIN_SITES", "3")
    assert len(small_federation) >= 4
    sites = copy_sites(small_federation[:4], tmp_path / "sites")
    home = tmp_path / "keyholder"

    first = run_simulated_federation(referral_spec, sites, rounds=1, encrypt=True, keyholder_home=home)
    assert first.encoding.n_rows > 0

    stages: list[int] = []
    with pytest.raises(PrivacyError, match="differencing"):
        run_simulated_federation(referral_spec, sites[:3], rounds=1, encrypt=True, keyholder_home=home,
                                 on_round=lambda r, _: stages.append(r))
    assert stages == []  # not even one round: it stopped at the statistics

    state = KeyHolderState(home)
    [refused] = actions(state, "refused")
    assert refused["details"]["error"] == "CohortError"
    assert refused["details"]["kind"] == f"{referral_spec.name}:stats"
    assert refused["details"]["cohort"] == sorted(p.name for p in sites[:3])
    granted_stats = [e for e in actions(state, "decrypt") if e["details"]["kind"].endswith(":stats")]
    assert len(granted_stats) == 1 and len(granted_stats[0]["details"]["cohort"]) == 4
