"""The coordinator-memory sweep runs every mode for real, at two site counts, in fresh processes, and its
numbers make sense: what holds every reply grows with the sites, what adds replies as they arrive does
not, and every aggregate is the right one (no timing assertions)."""

import numpy as np
import pytest
import tenseal as ts

from bench import coordinator_memory, nvflare_aggregator
from bench.errors import BenchUnavailable

SITES = (3, 48)
PARAMS = 20_000
MB = 1024 * 1024


@pytest.fixture(scope="module")
def report():
    return coordinator_memory.run(sites=SITES, params=PARAMS)


def _at(report, mode, sites):
    (point,) = [p for p in report["points"] if p["mode"] == mode and p["sites"] == sites]
    return point


def test_every_mode_runs_at_every_site_count_and_says_what_it_ran(report):
    modes = coordinator_memory.MODES
    assert len(modes) == 6 and {"plaintext", coordinator_memory.NVFLARE, coordinator_memory.SECAGG} <= set(modes)
    assert {(p["mode"], p["sites"]) for p in report["points"]} == {(m, n) for m in modes for n in SITES}
    assert set(report["modes"]) == set(modes) and all(report["modes"].values())
    for p in report["points"]:
        assert p["params"] == PARAMS
        assert p["peak_rss_mb"] >= p["baseline_rss_mb"] > 0
        assert p["added_mb"] == pytest.approx(p["peak_rss_mb"] - p["baseline_rss_mb"])
        assert p["seconds"] > 0
    # The sites' SecAgg+ run answered every stage at both site counts.
    assert set(report["secagg_sites_run"]) == set(SITES)


def test_every_mode_aggregates_the_same_update_correctly(report):
    for n in SITES:
        plaintext, held, streaming, packed, nvflare, secagg = (_at(report, m, n) for m in coordinator_memory.MODES)
        assert plaintext["reply_bytes"] == 8 * PARAMS and plaintext["max_abs_error"] < 1e-12
        # Same CKKS replies, same sum: only how long the replies are held differs.
        assert held["reply_bytes"] == streaming["reply_bytes"] and held["sum_bytes"] == streaming["sum_bytes"]
        assert packed["reply_bytes"] < streaming["reply_bytes"] < nvflare["reply_bytes"]
        # NVFlare's result carries a context with every tensor's vector; the sites decrypt the right mean.
        assert nvflare["reply_bytes"] > nvflare["reply_ciphertext_bytes"] > 0
        assert nvflare["max_abs_error"] < 1e-3
        # SecAgg+'s masked vector is int64 (8 bytes a value) plus its envelope ...
        assert 8 * PARAMS < secagg["reply_bytes"] < 9 * PARAMS
        # ... and the replayed server unmasked the sites' round: their aggregate, within quantisation.
        assert secagg["same_as_sites_run"]
        assert 0 < secagg["max_abs_error"] <= secagg["error_bound"]


def test_held_replies_grow_with_the_sites_and_replies_added_as_they_arrive_do_not(report):
    more = SITES[1] - SITES[0]

    def growth(mode):
        return _at(report, mode, SITES[1])["added_mb"] - _at(report, mode, SITES[0])["added_mb"]

    def replies_mb(mode):  # what holding every extra reply would cost
        return more * _at(report, mode, SITES[1])["reply_bytes"] / MB

    # Every reply held until the round ends: plaintext, Fenji as it was, and Flower's SecAgg+ server.
    for mode in ("plaintext", "held until the round ends", coordinator_memory.SECAGG):
        assert growth(mode) > 0.3 * replies_mb(mode), mode
    # Added as they arrive and dropped: Fenji's streaming sums and NVFlare's in-time aggregator.
    assert growth("streaming") < 0.25 * growth("held until the round ends")
    assert growth("streaming, packed") < 0.5 * replies_mb("streaming, packed")
    assert growth(coordinator_memory.NVFLARE) < 0.1 * replies_mb(coordinator_memory.NVFLARE)


def test_plot_draws_every_mode(report, tmp_path):
    png = tmp_path / "memory.png"
    coordinator_memory.plot(report, png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_process_that_dies_before_reporting_is_an_error_not_a_hang(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")  # the sites' SecAgg+ run cannot write its replies under it
    with pytest.raises(BenchUnavailable, match="exit code 1"):
        coordinator_memory._spawned(coordinator_memory._record_secagg, not_a_folder, 3, 100)


# ---- NVFlare's aggregator as the sweep models it ----

@pytest.fixture(scope="module")
def provisioned():
    return nvflare_aggregator.provision()


def test_nvflare_sites_send_one_vector_per_tensor_each_with_a_context_the_server_cannot_decrypt_with(provisioned):
    client, server = provisioned
    update = np.random.default_rng(1).normal(0, 0.1, 3000)
    result = nvflare_aggregator.encrypt_result(client, update)
    sizes = nvflare_aggregator.tensor_sizes(update.size)
    assert len(result) == len(sizes) == 8 and sum(sizes) == update.size
    for _, vector, context in result:
        assert len(vector) > 0 and not ts.context_from(context).is_private()
    assert not ts.context_from(server).is_private() and ts.context_from(client).is_private()


def test_nvflare_in_time_aggregate_is_the_mean_and_a_second_result_from_a_site_is_discarded(provisioned):
    client, server = provisioned
    rng = np.random.default_rng(2)
    updates = [rng.normal(0, 0.1, 500) for _ in range(3)]
    aggregator = nvflare_aggregator.InTimeAccumulator(server)
    for i, update in enumerate(updates):
        aggregator.accept(f"site-{i}", nvflare_aggregator.encrypt_result(client, update))
    aggregator.accept("site-0", nvflare_aggregator.encrypt_result(client, 100 * updates[0]))  # discarded
    mean = nvflare_aggregator.decrypt_mean(client, aggregator.aggregate())
    assert np.max(np.abs(mean - np.mean(updates, axis=0))) < 1e-4
    assert aggregator.total == {} and aggregator.contributors == []  # reset for the next round
