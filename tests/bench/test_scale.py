"""``fenji bench scale``: every mode's point really ran on Flower's engine, in its own process, and measured
what the contract says (bytes in the order the encryptions imply, memory from a baseline up)."""

import json
import sys

import pytest
from typer.testing import CliRunner

from bench import scale
from bench.errors import BenchUnavailable
from fenji.cli import app

MODES = ["plaintext", "ckks", "packed", "nvflare"]


def test_scale_runs_every_fenji_mode_on_three_sites(tmp_path):
    out, png = tmp_path / "scale.json", tmp_path / "scale.png"
    result = CliRunner().invoke(app, ["bench", "scale", "--sites", "3", "--modes", ",".join(MODES), "--rounds", "2",
                                      "--json", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["benchmark"] == "scale" and report["inputs"]["modes"] == MODES
    assert report["inputs"]["nvflare_params"]["coeff_mod_bit_sizes"] == [60, 40, 40]
    assert set(report["load_average"]) == {"before", "after"} and set(report["goals"]) == {
        "bytes_ratio_max", "round_time_ratio_max", "coordinator_memory"}
    points = {p["mode"]: p for p in report["points"]}
    assert list(points) == MODES
    for p in points.values():
        assert p["sites"] == 3 and p["rounds"] == 2 and p["rows_per_site"] == 120
        assert 90_000 < p["parameters"] < 110_000 and p["float32_bytes"] == 4 * (p["parameters"] + 1)
        assert p["round_seconds"]["n"] == 1 and p["total_seconds"] > p["round_seconds"]["median"] > 0
        assert p["coordinator_peak_mb"] >= p["coordinator_baseline_mb"] > 0
        assert 0 < p["mean_auroc"] <= 1
    # plaintext sends float64 (twice float32); each encryption costs what its ciphertexts imply: packed
    # (two values per BFV slot) < Fenji's CKKS (one per slot, one data prime) < NVFlare's context (two data primes)
    assert 1.9 < points["plaintext"]["bytes_ratio_float32"] < 2.1 and points["plaintext"]["aggregate_seconds"] is None
    sizes = {m: points[m]["update_bytes_per_site"] for m in ("packed", "ckks", "nvflare")}
    assert sizes["packed"] < sizes["ckks"] < sizes["nvflare"], sizes
    assert sizes["nvflare"] > 1.5 * sizes["ckks"], sizes
    assert all(points[m]["aggregate_seconds"]["n"] == 2 for m in sizes)
    # the table shows every point, the plot was drawn
    for mode in MODES:
        assert mode in result.output
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_unknown_mode_is_refused_before_any_run(tmp_path):
    result = CliRunner().invoke(app, ["bench", "scale", "--sites", "3", "--modes", "ckks,nope",
                                      "--json", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "nope" in result.output and not (tmp_path / "x.json").exists()


def test_secagg_runs_its_own_module_or_says_it_is_missing(monkeypatch):
    assert scale.SECAGG_MODULE == "bench.secagg_sites"
    assert scale._command("packed", 10, 3, 120) == [sys.executable, "-m", "bench.scale", "packed", "10", "3", "120"]
    monkeypatch.setattr(scale, "SECAGG_MODULE", "bench.clinics")  # any module that is there
    assert scale._command("secagg", 10, 3, 120) == [sys.executable, "-m", "bench.clinics", "10", "3", "120"]
    monkeypatch.setattr(scale, "SECAGG_MODULE", "bench.no_such_secagg_module")
    with pytest.raises(BenchUnavailable, match="no_such_secagg_module"):
        scale.run(sites=[3], modes=["ckks", "secagg"])


def _point(mode, sites, seconds, **extra):
    return {"mode": mode, "sites": sites, "round_seconds": {"median": seconds} if seconds else None, **extra}


def test_time_ratios_are_over_the_right_baseline():
    from matplotlib.figure import Figure

    report = {"inputs": {"sites": [10, 100], "modes": ["plaintext", "packed", "secagg"]},
              "points": [_point("plaintext", 10, 2.0), _point("packed", 10, 2.2),
                         _point("plaintext", 100, 10.0), _point("packed", 100, 30.0),
                         # SecAgg+'s seconds are fit rounds only: its ratio is its own run's, never over Fenji's
                         _point("secagg", 10, 1.0, round_time_ratio_plain=3.5),
                         _point("secagg", 100, 9.0, round_time_ratio_plain=2.5)]}
    ratios = {(p["mode"], p["sites"]): scale.time_ratio(report, p) for p in report["points"]}
    assert ratios[("packed", 10)] == pytest.approx(1.1) and ratios[("packed", 100)] == pytest.approx(3.0)
    assert ratios[("secagg", 10)] == 3.5 and ratios[("secagg", 100)] == 2.5
    assert ratios[("plaintext", 100)] == pytest.approx(1.0)
    assert scale.time_ratio(report, _point("packed", 300, 5.0)) is None  # no plaintext run at 300 sites
    ax = Figure().subplots()
    scale.draw_time_ratios(ax, report)
    assert sorted(round(bar.get_height(), 6) for bar in ax.patches) == [1.1, 2.5, 3.0, 3.5]
