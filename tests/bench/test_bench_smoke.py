"""Benchmarks run on a tiny configuration and write what they promise (no timing assertions)."""

import json

from typer.testing import CliRunner

from fenji.cli import app


def test_he_overhead_runs_tiny(tmp_path):
    out, png = tmp_path / "he.json", tmp_path / "he.png"
    result = CliRunner().invoke(app, ["bench", "he-overhead", "--json", str(out), "--repeats", "1",
                                      "--sizes", "1000", "--sites", "3", "--plot", str(png), "--quick"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["parameters"] > 500 and report["inputs"]["sites"] == 3
    assert row["bytes_per_site_encrypted"] > row["bytes_per_site_plaintext_float32"]
    assert row["max_decryption_error"]["max"] < 1e-4
    assert set(row["round_time_ratio"]) == {"min", "median", "max", "n"}
    assert set(row["checks"]) == {"per_site", "per_round"} and row["checks"]["per_site"]["trailer_bytes"] == 0
    assert "checks" in result.output  # the printed report names what the checks cost
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_unknown_benchmark_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["bench", "nope", "--json", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "available" in result.output


def test_heart_runs_tiny_on_flamby_split(tmp_path, monkeypatch):
    from tests.conftest import SHARED_DATA, require_shared_data

    require_shared_data("uci_heart_disease")
    monkeypatch.setenv("FENJI_DATA_DIR", str(SHARED_DATA))
    out, png = tmp_path / "heart.json", tmp_path / "heart.png"
    result = CliRunner().invoke(app, ["bench", "heart", "--json", str(out), "--seeds", "1", "--rounds", "2",
                                      "--plot", str(png)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    # FLamby's protocol: 740 complete rows, 303/261/46/130
    assert {h: r["rows"] for h, r in report["inputs"]["rows"].items()} == {
        "cleveland": 303, "hungarian": 261, "switzerland": 46, "va": 130}
    for method in ("local_only", "pooled", "fenji_encrypted", "fenji_encrypted_dp"):
        accuracy = report["results"][method]["mean_accuracy"]["mean"]
        assert 0.4 < accuracy <= 1.0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_serving_runs_tiny_against_real_servers(tmp_path):
    """The three servers really started, wrk really loaded them, the switch really happened."""
    out, png = tmp_path / "serving.json", tmp_path / "serving.png"
    result = CliRunner().invoke(app, ["bench", "serving", "--json", str(out), "--repeats", "1", "--duration", "1",
                                      "--connections", "1,4", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    res = report["results"]
    for kind in ("bare", "fenji", "mlflow"):
        assert [r["connections"] for r in res["single"][kind]] == [1, 4]
        for row in res["single"][kind]:
            assert row["requests_per_second"] > 0 and row["failed"] == 0
            assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
    # the MLflow anchor answered every benchmark patient as Fenji does before it was measured
    assert res["anchor"]["same_predictions"] and res["anchor"]["rows_compared"] == report["inputs"]["batch_rows"]
    assert "mlflow" in result.output  # the printed table has its columns
    assert res["batch"]["http_rows_per_second"] > 0 and res["batch"]["in_process_rows_per_second"]["assess"] > 0
    switch = res["switch"]
    assert switch["connections"] == 4 and switch["failed"] == 0 and switch["mixed_answers"] == 0
    assert switch["reloads"] > 0 and switch["reloads_ok"] == switch["reloads"]
    # the answers came from both model versions: the reloads swapped models under load
    assert switch["versions_served"] == ["1", "2"], switch["answers"]
    assert sum(switch["answers"].values()) == switch["requests"]
    assert set(report["goals"]) == {"single_throughput_ratio_at_32", "single_p99_ms_at_32", "batch_rows_ratio",
                                    "failed_requests_during_switch"}
    assert png.read_bytes()[:4] == b"\x89PNG"

