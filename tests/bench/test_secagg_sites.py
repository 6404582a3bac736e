"""``python -m bench.secagg_sites``: Flower's SecAgg+ on the clinics, in a process of its own, prints the
scale benchmark's record (no timing assertions: only that every figure is there and came from real rounds)."""

import json
import subprocess
import sys

import pytest

from bench import secagg_sites
from bench.errors import BenchUnavailable
from bench.secagg import quantisation_bound
from bench.secagg_settings import NUM_SHARES


@pytest.fixture(scope="module")
def record():
    proc = subprocess.run([sys.executable, "-m", "bench.secagg_sites", "3", "2", "60", "--check"],
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_record_has_the_scale_contract(record):
    assert set(record) == set(secagg_sites.CONTRACT) | {"settings", "aggregate_check", "round_seconds_plain",
                                                        "round_time_ratio_plain"}
    assert (record["mode"], record["sites"], record["rounds"], record["rows_per_site"]) == ("secagg", 3, 2, 60)
    assert record["settings"]["num_shares"] == NUM_SHARES and record["aggregate_seconds"] is None
    # The clinical task's ~100k-parameter MLP, not bench.secagg's random-input models.
    assert 90_000 < record["parameters"] < 110_000
    assert record["float32_bytes"] == 4 * (record["parameters"] + 1)
    # Round 1 is left out of the spread (Ray's actors pay their imports then).
    assert record["round_seconds"]["n"] == 1 and 0 < record["round_seconds"]["median"] < record["total_seconds"]
    assert 0.0 <= record["mean_auroc"] <= 1.0
    # Flower's plain fit round beside each SecAgg+ round: the ratio is of the two medians.
    plain = record["round_seconds_plain"]
    assert plain["n"] == 1 and record["round_time_ratio_plain"] == pytest.approx(
        record["round_seconds"]["median"] / plain["median"])


def test_bytes_are_the_four_stages_of_a_masked_int_vector(record):
    # The masked vector is 8 bytes per value (2x float32); the key stages add a little on top.
    assert 1.5 < record["bytes_ratio_float32"] < 3
    assert record["bytes_ratio_float32"] == pytest.approx(record["update_bytes_per_site"] / record["float32_bytes"])


def test_the_sites_ran_in_ray_actors_and_the_coordinator_peak_is_its_own(record):
    assert record["settings"]["client_processes"] >= 1
    assert record["coordinator_peak_mb"] >= record["coordinator_baseline_mb"] > 0


def test_each_aggregate_is_fedavg_of_the_rounds_updates_within_quantisation(record):
    check = record["aggregate_check"]
    assert len(check["max_abs_difference_from_plain"]) == 2
    # Quantised and unmasked (stochastic rounding leaves a trace) and within its bound; the bound is
    # at least bench.secagg's (every clinic's weight ratio is at most 1).
    assert check["quantisation_bound"] >= quantisation_bound()
    assert all(0 < d <= check["quantisation_bound"] for d in check["max_abs_difference_from_plain"])


def test_too_few_sites_is_refused_before_the_engine_starts():
    with pytest.raises(BenchUnavailable, match="at least 3 sites"):
        secagg_sites.run_secagg_sites(2, 1, 60)
