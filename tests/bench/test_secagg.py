"""The SecAgg+ anchor runs Flower's SecAgg+ workflow for real and aggregates what plain FedAvg does
(no timing assertions: only that every figure is there and came from real rounds)."""

import pytest

from bench import secagg
from bench.errors import BenchUnavailable


@pytest.fixture(scope="module")
def report():
    calls = []
    result = secagg.run_secagg(sizes=(1000,), sites=3, rounds=1, rows=64, progress=lambda: calls.append(1))
    result["progress_calls"] = len(calls)
    return result


def test_secagg_aggregate_equals_plain_fedavg_within_quantisation(report):
    (row,) = report["results"]
    (difference,) = row["max_abs_difference_from_plain"]
    # Quantised and unmasked, not the plain path twice (stochastic rounding leaves a trace) ...
    assert difference > 0
    # ... and within SecAgg+'s quantisation error of the plain weighted average.
    assert difference <= row["quantisation_bound"] == secagg.quantisation_bound()


def test_report_structure_and_bytes_come_from_every_stage(report):
    assert report["benchmark"] == "secagg" and report["progress_calls"] == 1
    assert report["inputs"]["sites"] == 3 and report["inputs"]["secaggplus"]["num_shares"] == secagg.NUM_SHARES
    (row,) = report["results"]
    assert row["parameters"] == 40 * 24 + 24 + 24 + 1  # bench.he_overhead's 1k model
    float32 = row["bytes_per_site_plaintext_float32"]
    assert float32 == 4 * row["parameters"]
    # One sample per site for one round.
    assert row["bytes_per_site_secagg"]["n"] == row["bytes_per_site_plain_round"]["n"] == 3
    # The plain reply carries the float32 update and Flower's envelope.
    assert float32 < row["bytes_per_site_plain_round"]["median"] < float32 + 4096
    stages = row["bytes_per_stage_secagg"]
    assert set(stages) == set(secagg.STAGES) == set(row["site_seconds_secagg_per_stage"])
    assert min(stages.values()) > 0
    # The masked vector is at least the update; the key stages are small beside it.
    assert stages["collect_masked_vectors"] > float32
    assert row["bytes_ratio"] == pytest.approx(row["bytes_per_site_secagg"]["median"] / float32)
    assert row["bytes_ratio_to_plain_round"] == pytest.approx(
        row["bytes_per_site_secagg"]["median"] / row["bytes_per_site_plain_round"]["median"])
    assert row["round_time_ratio"] == pytest.approx(
        row["round_seconds_secagg"]["median"] / row["round_seconds_plain"]["median"])
    assert min(row["round_seconds_plain"]["median"], row["round_seconds_secagg"]["median"]) > 0


def test_too_few_sites_is_refused_before_the_engine_starts():
    with pytest.raises(BenchUnavailable, match="at least 3 sites"):
        secagg.run_secagg(sizes=(1000,), sites=2, rounds=1)
