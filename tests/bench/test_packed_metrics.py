"""``fenji bench packed-metrics`` on a tiny setting: four small clinics, one task, two rounds, plaintext
and packed on Flower's engine. The packed run's metrics match plaintext's, and stop matching when the
packed sum is read at the wrong scale (so the check can fail)."""

import json

import pytest
from typer.testing import CliRunner

from bench import packed_metrics
from fenji.cli import app
from tests.conftest import SMALL_CLINICS

TINY = {"tasks": ("triage",), "modes": ("plaintext", "packed"), "rounds": 2, "clinics": SMALL_CLINICS}


@pytest.fixture(scope="module")
def tiny_report():
    return packed_metrics.run(**TINY)


def test_packed_metrics_match_plaintext_within_a_thousandth(tiny_report):
    assert tiny_report["inputs"]["rounds"] == 2 and tiny_report["machine"] == "shared"
    assert tiny_report["inputs"]["clinics"] == [c.name for c in SMALL_CLINICS]
    (task,) = tiny_report["results"].values()
    assert task["kind"] == "ordinal" and list(task["modes"]) == ["plaintext", "packed"]
    for point in task["modes"].values():
        assert set(point["mean"]) == {"auroc", "kappa"} and 0.5 < point["mean"]["auroc"] <= 1.0
        assert set(point["sites"]) == {c.name for c in SMALL_CLINICS}
    packed = task["versus_plaintext"]["packed"]
    assert all(abs(d) < packed_metrics.TOLERANCE for d in packed["mean_difference"].values())
    # Per clinic only recorded: one patient pair reordered at a 140-row clinic moves its AUROC by about 1e-3.
    assert set(packed["max_site_abs_difference"]) == {"auroc", "kappa"}
    # The model after round 1 is plaintext FedAvg's within the packing's budget, and not exactly it.
    assert 0 < packed["round_1_model_max_abs_difference"] <= packed["round_1_error_budget"]
    assert tiny_report["goal"]["met"]


def test_a_wrong_packing_scale_moves_the_metrics_and_misses_the_goal(monkeypatch):
    """The key holder reads the packed lanes at the step the round's bound sets (bound / 2^16): told twice
    the bound the sites packed with, it reads every value at twice its size."""
    from coordinator.keyholder_client import KeyHolderClient

    real = KeyHolderClient.decrypt_aggregate

    def wrong_scale(self, blob, request):
        if request.scheme == "packed":
            request = request.model_copy(update={"bound": 2 * request.bound})
        return real(self, blob, request)

    monkeypatch.setattr(KeyHolderClient, "decrypt_aggregate", wrong_scale)
    report = packed_metrics.run(**TINY)
    packed = report["results"]["triage"]["versus_plaintext"]["packed"]
    assert max(abs(d) for d in packed["mean_difference"].values()) > packed_metrics.TOLERANCE
    assert packed["round_1_model_max_abs_difference"] > packed["round_1_error_budget"]
    assert not report["goal"]["met"]


def test_cli_writes_the_report_table_and_plot(tiny_report, tmp_path, monkeypatch):
    asked = {}
    monkeypatch.setattr(packed_metrics, "run", lambda **kw: asked.update(kw) or tiny_report)
    out, png = tmp_path / "packed.json", tmp_path / "packed.png"
    result = CliRunner().invoke(app, ["bench", "packed-metrics", "--json", str(out), "--plot", str(png),
                                      "--rounds", "2"])
    assert result.exit_code == 0, result.output
    assert asked["rounds"] == 2
    assert json.loads(out.read_text())["results"]["triage"]["modes"]["packed"]["mean"]
    assert "kappa" in result.output and "met" in result.output
    assert png.read_bytes()[:4] == b"\x89PNG"
