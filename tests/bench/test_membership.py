"""The membership-inference benchmark: a real attack on really trained models, with and without DP-SGD."""

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from bench import membership
from bench.errors import BenchUnavailable
from fenji.cli import app
from simulation.synth import ClinicProfile

TINY = ClinicProfile("tiny_clinic", 160, age_mean=55)


def test_no_attack_beats_chance_at_epsilon_zero_and_the_bound_has_its_closed_form():
    assert membership.dp_auroc_bound(0.0, 0.0) == pytest.approx(0.5, abs=1e-6)
    # With δ = 0 the trade-off curve's area is e^ε / (1 + e^ε).
    assert membership.dp_auroc_bound(1.0, 0.0) == pytest.approx(math.e / (1 + math.e), abs=1e-6)
    assert membership.dp_auroc_bound(1.0, 0.0) < membership.dp_auroc_bound(1.0, 1e-3) < membership.dp_auroc_bound(8.0, 1e-3)
    assert membership.dp_auroc_bound(8.0, 1e-3) > 0.999


def test_attack_metrics_on_known_losses():
    members, nonmembers = np.array([0.1, 0.2, 0.3, 2.0]), np.array([0.25, 1.0, 1.5, 3.0])
    out = membership.attack_metrics(members, nonmembers)
    # 12 of the 16 (member, non-member) pairs have the member's loss lower
    assert out["auroc"] == pytest.approx(12 / 16)
    # threshold = mean member loss 0.65: 3 of 4 members and 1 of 4 non-members fall below it
    assert (out["tpr"], out["fpr"]) == (0.75, 0.25) and out["advantage"] == pytest.approx(0.5)


def test_the_attack_finds_the_members_of_an_overfit_model(tmp_path):
    spec, frame = membership.load_clinic(tmp_path, "referral_risk", TINY)
    members, nonmembers = membership._split(frame, seed=0)
    mlp = membership.with_family(spec, "mlp")
    plain = membership.run_setting(mlp, members, nonmembers, epochs=300, seed=0, epsilon=None)
    assert plain["train_accuracy"] > 0.95 and plain["noise_multiplier"] == 0  # memorised its 80 rows
    assert plain["attack"]["member_loss"] < plain["attack"]["nonmember_loss"]
    assert plain["attack"]["auroc"] > 0.65 and plain["attack"]["advantage"] > 0.1
    private = membership.run_setting(mlp, members, nonmembers, epochs=300, seed=0, epsilon=1.0)
    assert private["noise_multiplier"] > 1 and private["train_accuracy"] < 0.95
    assert private["attack"]["auroc"] < plain["attack"]["auroc"]


def test_every_privacy_level_is_reported_with_its_epsilon(tmp_path):
    def absent(workdir):
        raise BenchUnavailable("no such data here")

    datasets = {"referral": lambda w: membership.load_clinic(w, "referral_risk", TINY),
                "triage": lambda w: membership.load_clinic(w, "triage", TINY), "absent": absent}
    report = membership.run(datasets=datasets, seeds=1, epochs=3, families=("logistic",))
    assert report["inputs"]["unavailable"] == {"absent": "no such data here"}
    assert report["inputs"]["data"]["referral"]["members"] == report["inputs"]["data"]["referral"]["nonmembers"] > 70
    assert report["inputs"]["data"]["triage"]["label"] == "ordinal"
    rows = {(r["dataset"], r["epsilon"]): r for r in report["results"]}
    assert set(rows) == {(d, e) for d in ("referral", "triage") for e in (None, 8.0, 1.0)}
    for dataset in ("referral", "triage"):
        for eps in (8.0, 1.0):
            r = rows[(dataset, eps)]
            assert r["delta"] == 1e-3 and r["noise_multiplier"] > 0
            assert r["attack_auroc_bound"] == pytest.approx(membership.dp_auroc_bound(eps, 1e-3))
            assert 0 <= r["attack_auroc"]["median"] <= 1 and r["accuracy"]["n"] == 1
        assert rows[(dataset, 1.0)]["noise_multiplier"] > rows[(dataset, 8.0)]["noise_multiplier"]
        plain = rows[(dataset, None)]
        assert plain["delta"] is None and plain["noise_multiplier"] == 0 and plain["attack_auroc_bound"] == 1.0
    assert report["attack"]["assumes"]


def test_a_model_dp_sgd_refuses_is_recorded_unsupported_not_a_crash(tmp_path, monkeypatch):
    from models.errors import TaskSpecError

    real_train = membership.train

    def train(model, spec, x, y, config):  # as models.training refused ordinal models before Opacus could
        if config.dp_noise_multiplier > 0:
            raise TaskSpecError("DP-SGD is not available for this model")
        return real_train(model, spec, x, y, config)

    monkeypatch.setattr(membership, "train", train)
    report = membership.run(datasets={"referral": lambda w: membership.load_clinic(w, "referral_risk", TINY)},
                            seeds=2, epochs=2, families=("logistic",))
    plain, *private = report["results"]
    assert plain["epsilon"] is None and plain["attack_auroc"]["n"] == 2
    assert [(r["epsilon"], r["unsupported"]) for r in private] == [
        (8.0, "DP-SGD is not available for this model"), (1.0, "DP-SGD is not available for this model")]


def test_heart_is_skipped_when_its_data_is_absent(tmp_path):
    with pytest.raises(BenchUnavailable, match="FENJI_DATA_DIR"):
        membership.load_heart(tmp_path / "no-data", tmp_path / "work")


def test_heart_rows_are_flambys_740(tmp_path):
    from tests.conftest import SHARED_DATA, require_shared_data

    require_shared_data("uci_heart_disease")
    spec, frame = membership.load_heart(SHARED_DATA, tmp_path)
    assert spec.name == "heart_disease" and len(frame) == 740 and frame["record_id"].is_unique


def test_cli_runs_tiny_and_writes_json_and_plot(tmp_path, monkeypatch):
    monkeypatch.setenv("FENJI_DATA_DIR", str(tmp_path / "no-data"))  # heart is skipped, not an error
    out, png = tmp_path / "membership.json", tmp_path / "membership.png"
    result = CliRunner().invoke(app, ["bench", "membership", "--json", str(out), "--plot", str(png),
                                      "--seeds", "1", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["inputs"]["unavailable"]) == {"heart"} and "heart skipped" in result.output
    assert {(r["dataset"], r["family"]) for r in report["results"]} == {
        (d, f) for d in ("clinic_referral", "clinic_triage") for f in ("logistic", "mlp")}
    assert png.read_bytes()[:4] == b"\x89PNG"
