"""Attack (issue 13): extract a count at a site with n ≥ min_n through an evaluation.

The coordinator chooses the model a site evaluates. A logistic model that predicts "referred" exactly
for the patients with a COPD history makes ``accuracy × n`` the number of held-out patients whose
referral agrees with their COPD history, a small cell, and ``ece`` and ``log-loss`` its complement.
Before, a site with n ≥ min_n sent these metrics exactly and only rounded ``n`` to 5: the attacker
finds the exact n near the released one (the one that makes ``accuracy × n`` whole) and reads the
count to the patient. Two sites that differ by one patient in that cell sent different numbers.

Now the egress guard puts every metric on a grid whose step is worth ``COUNT_ROUNDING`` patients
(``node_agent.egress``): of two sites one patient apart in the cell, at least one of the two
neighbours of a site releases exactly what that site releases, as with a rounded count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import MessageType

from models.encoding import Encoder, EncodingParams
from node_agent.client_app import build_client_app
from node_agent.egress import COUNT_ROUNDING
from node_agent.local import load_site_data
from node_agent.store import SiteStore
from tests.attacks.conftest import (
    call_node,
    fresh_sites,
    job_config,
    node_message,
    site_admin,
)

FEATURE = "hx_copd"
RELEASED = ("n", "num-examples", "accuracy", "ece", "log-loss")


def _copd_model(config, flat: np.ndarray, spec) -> np.ndarray:
    """Logistic weights that predict "referred" iff the patient has a COPD history (last entry: bias)."""
    import json

    columns = Encoder(spec, EncodingParams.from_dict(json.loads(str(config["encoding"])))).columns
    crafted = np.zeros_like(flat)
    crafted[columns.index(FEATURE)] = 50.0
    crafted[-1] = -25.0
    return crafted


def _agreeing(site: Path, spec) -> tuple[int, list[str], list[str]]:
    """The cell's count (held-out patients whose referral equals their COPD history), and the record
    ids of patients in and out of it (COPD history recorded)."""
    test = load_site_data(site, spec).test_frame
    known = test[test[FEATURE].notna()]
    agree = known[FEATURE].astype(bool) == (known[spec.label.name].astype(str) == "1")
    return int(agree.sum()), list(known.loc[agree, "record_id"]), list(known.loc[~agree, "record_id"])


def _flip(site: Path, spec, record_id: str) -> None:
    """One patient's COPD history the other way: the cell gains or loses that patient."""
    with SiteStore(site) as store:
        store.connection.execute(f"UPDATE {store.table_name(spec)} SET {FEATURE} = NOT {FEATURE} WHERE record_id = ?",
                                 [record_id])


def _evaluate(site: Path, spec, config, model: np.ndarray, *, coarse: bool = True) -> dict[str, float]:
    from node_agent.policy import load_site_policy, save_site_policy

    site_admin(site, spec)
    policy = load_site_policy(site)
    policy.coarse_metrics = coarse  # the site's choice: `fenji node policy --coarse-metrics`
    save_site_policy(site, policy)
    reply = call_node(build_client_app([site], allow_plaintext=True), node_message(MessageType.EVALUATE, config, model))
    assert not reply.has_error(), reply.error.reason
    return {k: float(v) for k, v in reply.content["metrics"].items()}


def _recovered_count(metrics: dict[str, float]) -> set[int]:
    """The attack: every exact n the released n allows for which ``accuracy × n`` is whole."""
    released = int(metrics["n"])
    return {round(metrics["accuracy"] * n) for n in range(released - COUNT_ROUNDING // 2, released + COUNT_ROUNDING // 2 + 1)
            if abs(metrics["accuracy"] * n - round(metrics["accuracy"] * n)) < 1e-6}


@pytest.fixture()
def sites(small_federation, tmp_path):
    """Three copies of one site: as it is, one patient fewer in the cell, one patient more."""
    return [fresh_sites(small_federation[:1], tmp_path / name)[0] for name in ("same", "fewer", "more")]


def test_a_site_above_min_n_releases_no_count_finer_than_its_count_rule(sites, referral_spec):
    site, fewer, more = sites
    count, inside, outside = _agreeing(site, referral_spec)
    n = len(load_site_data(site, referral_spec).test_frame)
    assert n >= 10 and inside and outside  # above the default min n, with patients on both sides
    _flip(fewer, referral_spec, inside[0])
    _flip(more, referral_spec, outside[0])
    assert [_agreeing(s, referral_spec)[0] for s in (fewer, more)] == [count - 1, count + 1]

    config, flat = job_config(referral_spec, site, run_id="extract-above-min-n")
    model = _copd_model(config, flat, referral_spec)
    released = {name: _evaluate(s, referral_spec, config, model) for name, s in zip(("same", "fewer", "more"), sites)}
    # Old main (exact metrics): each neighbour released something else, and the attack read each count.
    same = [other for other in (released["fewer"], released["more"])
            if all(other[key] == released["same"][key] for key in RELEASED)]
    assert same, f"one patient more or fewer in the cell changed what left the site: {released}"
    assert _recovered_count(same[0]) == _recovered_count(released["same"])  # one answer for two counts
    for metrics in released.values():  # on the grid of the released n: k patients per step
        assert metrics["accuracy"] * metrics["n"] / COUNT_ROUNDING == pytest.approx(
            round(metrics["accuracy"] * metrics["n"] / COUNT_ROUNDING))


def test_with_exact_metrics_the_default_the_attack_reads_the_count(sites, referral_spec):
    """What a site that keeps the default (exact metrics above min n) releases: the count, to the patient."""
    site = sites[0]
    count, _, _ = _agreeing(site, referral_spec)
    config, flat = job_config(referral_spec, site, run_id="extract-above-min-n-exact")
    released = _evaluate(site, referral_spec, config, _copd_model(config, flat, referral_spec), coarse=False)
    assert count in _recovered_count(released)
