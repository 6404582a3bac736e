"""The clinical models' building blocks: ordinal consistency, missing data, calibration, tier policy,
explanations, personalisation, and the NumPy advisor path against PyTorch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from models.advisor import TaskModel, encode_records
from models.calibration import (
    Calibration,
    calibration_statistics,
    expected_calibration_error,
    fit_calibration,
)
from models.encoding import Encoder, SiteStatistics
from models.explain import occlusion_contributions
from models.nets import OrdinalModel, build_model, get_flat, set_flat
from models.spec import load_task
from models.training import TrainConfig, predict_proba, predicted_level


@pytest.fixture(scope="module")
def triage_spec():
    return load_task("triage")


def _random_ordinal(spec, width, seed):
    model = build_model(spec, width)
    rng = np.random.default_rng(seed)
    # Any parameters at all, including negative raw gaps: the cut points must stay ordered.
    return set_flat(model, rng.normal(0, 3, get_flat(model).size))


def test_ordinal_outputs_are_consistent_for_any_parameters(triage_spec):
    width = Encoder(triage_spec).width
    x = np.random.default_rng(0).normal(0, 2, (200, width)).astype(np.float32)
    for seed in range(5):
        model = _random_ordinal(triage_spec, width, seed)
        assert isinstance(model, OrdinalModel)
        cuts = model.cutpoints().detach().numpy()
        assert np.all(np.diff(cuts) > 0)
        for temperature in (0.5, 1.0, 3.0):
            cum = model.cumulative(torch.as_tensor(x), temperature).detach().numpy()
            assert np.all(np.diff(cum, axis=1) >= 0), "P(Y <= k) must not decrease with k"
            proba = predict_proba(model, triage_spec, x, Calibration(kind="temperature", temperature=temperature))
            assert np.all(proba >= 0) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)


def test_averaged_ordinal_models_stay_ordinal(triage_spec):
    """FedAvg averages raw parameters; the average of two ordinal models is still ordinal."""
    width = Encoder(triage_spec).width
    a, b = _random_ordinal(triage_spec, width, 1), _random_ordinal(triage_spec, width, 2)
    avg = set_flat(build_model(triage_spec, width), (get_flat(a) + get_flat(b)) / 2)
    assert np.all(np.diff(avg.cutpoints().detach().numpy()) > 0)


def test_predicted_level_is_the_median_class():
    proba = np.array([[0.6, 0.2, 0.1, 0.05, 0.05], [0.1, 0.1, 0.1, 0.1, 0.6], [0.3, 0.1, 0.2, 0.2, 0.2]])
    assert predicted_level(proba).tolist() == [0, 4, 2]


def test_ece_on_known_cases():
    # Every patient given 0.8 while 70 % have the outcome: ECE = |0.7 - 0.8| = 0.1.
    y = np.array([1] * 7 + [0] * 3)
    proba = np.tile([0.2, 0.8], (10, 1))
    assert expected_calibration_error(proba, y) == pytest.approx(0.1)
    # Two bins, each exactly right: ECE 0.
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    p = np.array([0.25] * 4 + [0.75] * 4)
    assert expected_calibration_error(np.stack([1 - p, p], 1), y) == pytest.approx(0.0)
    # Several classes: top-label confidence 0.9 while right half the time -> 0.4.
    proba = np.tile([0.9, 0.05, 0.05], (4, 1))
    assert expected_calibration_error(proba, np.array([0, 0, 1, 2])) == pytest.approx(0.4)


def test_platt_from_summed_histograms_recovers_the_true_map(referral_spec):
    """Sites' logit histograms summed, then fitted: the known slope and intercept come back."""
    rng = np.random.default_rng(0)

    class Fixed(torch.nn.Module):  # a "model" whose logit is the first input
        def forward(self, x):
            return x[:, :1]

    total = 0
    for _ in range(3):  # three sites
        z = rng.normal(0, 2, 4000)
        y = (rng.random(4000) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))).astype(int)
        total = total + calibration_statistics(Fixed(), referral_spec, z[:, None], y)
    cal = fit_calibration(referral_spec, total)
    assert cal.kind == "platt"
    assert cal.slope == pytest.approx(0.5, abs=0.05) and cal.intercept == pytest.approx(-1.0, abs=0.1)


def test_temperature_fixes_an_overconfident_model():
    spec = load_task("diagnosis")
    rng = np.random.default_rng(1)
    k = len(spec.label.classes)

    class Scaled(torch.nn.Module):  # true logits times 3: overconfident
        def forward(self, x):
            return 3 * x

    true_logits = rng.normal(0, 1.5, (6000, k))
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    cal = fit_calibration(spec, calibration_statistics(Scaled(), spec, true_logits, y))
    assert cal.temperature == pytest.approx(3.0, rel=0.1)


def _frame(spec, rows):
    return pd.DataFrame([{f.name: r.get(f.name) for f in spec.features} | {spec.label.name: "0"} for r in rows])


PATIENT = {"age": 67, "sex": "M", "sbp": 150, "dbp": 88, "heart_rate": 118, "resp_rate": 26, "temperature": 38.2,
           "spo2": 89, "avpu": "A", "pain_score": 3, "complaint": "dyspnoea", "arrival": "walk_in",
           "hx_hypertension": True, "hx_diabetes": False, "hx_copd": True, "hx_heart_disease": False}


def test_a_never_recorded_feature_is_missing_not_a_plausible_value(referral_spec):
    frame = _frame(referral_spec, [PATIENT] * 30).drop(columns=["spo2"])  # a site without an oximeter
    params = SiteStatistics.from_frame(referral_spec, frame).encoding_params()
    encoder = Encoder(referral_spec, params)
    x = encoder.transform(frame)
    spo2, flag = encoder.columns.index("spo2"), encoder.columns.index("spo2:missing")
    assert np.all(x[:, flag] == 1) and np.all(x[:, spo2] == 0)
    assert params.means["spo2"] == 0.0 and params.stds["spo2"] == 1.0  # no statistics invented
    # Scoring a patient with SpO2 absent is not the same as scoring the average SpO2.
    as_mean = encoder.transform(_frame(referral_spec, [PATIENT | {"spo2": 95.0}]))
    absent = encoder.transform(_frame(referral_spec, [{k: v for k, v in PATIENT.items() if k != "spo2"}]))
    assert not np.array_equal(as_mean, absent)
    assert absent[0, flag] == 1 and as_mean[0, flag] == 0


def test_numpy_encoding_and_inference_match_pandas_and_torch(small_federation, triage_spec):
    from node_agent.local import load_site_data

    for spec in (load_task("referral_risk"), load_task("diagnosis"), triage_spec):
        frame = load_site_data(small_federation[0], load_task("referral_risk")).train_frame.head(60)
        frame[spec.label.name] = spec.label.classes[0]
        params = SiteStatistics.from_frame(spec, frame).encoding_params()
        encoder = Encoder(spec, params)
        records = [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]
        x = encoder.transform(frame)
        np.testing.assert_allclose(encode_records(encoder, records), x, atol=1e-6)
        model = build_model(spec, encoder.width)
        set_flat(model, np.random.default_rng(3).normal(0, 0.5, get_flat(model).size))
        cal = Calibration(kind="platt", slope=0.8, intercept=0.3) if spec.label.kind == "binary" else \
            Calibration(kind="temperature", temperature=1.7)
        fast = TaskModel(spec, params, get_flat(model), cal)
        np.testing.assert_allclose(fast.proba(x), predict_proba(model, spec, x, cal), atol=1e-5)


def test_explanations_of_a_logistic_model_are_exact(referral_spec):
    rng = np.random.default_rng(0)
    encoder = Encoder(referral_spec)
    w = rng.normal(0, 1, encoder.width)
    x = rng.normal(0, 1, (5, encoder.width)).astype(np.float32)
    baseline = rng.random(encoder.width).astype(np.float32)
    score, contrib, names = occlusion_contributions(lambda v: v @ w, x, baseline, encoder.feature_slices())
    slices = encoder.feature_slices()
    for f, name in enumerate(names):
        cols = slices[name]
        np.testing.assert_allclose(contrib[:, f], (x[:, cols] - baseline[cols]) @ w[cols], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(contrib.sum(axis=1), score - baseline @ w, rtol=1e-4, atol=1e-4)


def test_personalisation_adapts_to_a_site_unlike_the_others(small_federation, referral_spec):
    """A site whose outcome rate is far from the federation's gets its own calibration or head."""
    from node_agent.local import load_site_data, personalise

    data = load_site_data(small_federation[0], referral_spec)
    flipped = data.train_frame.copy()
    flipped[referral_spec.label.name] = "1"  # an extreme site: everyone referred up ...
    keep = np.random.default_rng(0).random(len(flipped)) < 0.3
    flipped.loc[keep, referral_spec.label.name] = "0"  # ... but 30 % not
    data.train_frame = flipped
    params = SiteStatistics.from_frame(referral_spec, flipped).encoding_params()
    x = Encoder(referral_spec, params).transform(flipped)
    global_model = build_model(referral_spec, x.shape[1])  # predicts 50 % for everyone
    result = personalise(data, params, get_flat(global_model), Calibration(), TrainConfig.from_spec(referral_spec))
    assert result.choice != "global"
    assert min(result.validation_log_loss.values()) < result.validation_log_loss["global"]
    risk = predict_proba(result.model, referral_spec, x, result.calibration)[:, 1].mean()
    assert risk == pytest.approx(0.7, abs=0.08)
