"""DP-SGD: the noise spends the budget asked for, and it is really applied."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from models.spec import load_task
from models.training import TrainConfig, dp_noise_multiplier, evaluate, train


@pytest.mark.parametrize("n, epochs", [(199, 5), (30, 5), (1000, 20)])
def test_noise_multiplier_spends_the_target_epsilon(n, epochs):
    sigma = dp_noise_multiplier(epsilon=1.0, delta=1e-3, n=n, batch_size=32, epochs=epochs)
    sample_rate = min(32 / n, 1.0)
    accountant = RDPAccountant()
    accountant.history = [(sigma, sample_rate, int(round(epochs / sample_rate)))]
    assert accountant.get_epsilon(delta=1e-3) == pytest.approx(1.0, abs=0.05)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)).astype(np.float32)
    y = (x[:, 0] + rng.normal(0, 0.3, 400) > 0).astype(int)
    return x, y


def _fit(noise: float, seed: int = 0) -> tuple[np.ndarray, float]:
    spec = load_task("heart_disease")
    x, y = _data()
    model = torch.nn.Linear(5, 1)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    train(model, spec, x, y, TrainConfig(epochs=5, learning_rate=0.5, batch_size=32, dp_noise_multiplier=noise, seed=seed))
    return model.weight.detach().numpy().ravel().copy(), evaluate(model, spec, x, y)["auroc"]


def test_dp_training_learns_with_moderate_noise():
    _, auroc = _fit(1.0)
    assert auroc > 0.85


def test_dp_noise_is_applied():
    w_a, _ = _fit(50.0, seed=0)
    w_b, _ = _fit(50.0, seed=1)
    w_quiet, _ = _fit(1e-6, seed=0)
    assert np.abs(w_a - w_b).max() > 0.5          # huge noise: different seeds, very different models
    assert np.abs(w_a - w_quiet).max() > 0.5      # and far from the nearly noiseless model


@pytest.mark.parametrize("task", ["triage", "diagnosis", "referral_risk", "heart_disease"])
def test_dp_sgd_trains_every_built_in_family_with_per_sample_gradients(task):
    """Every built-in task trains under DP-SGD, the ordinal triage model's cut points included (they
    are an embedding row, a layer Opacus clips per sample): noise moves every trainable parameter."""
    from models.nets import build_model, get_flat

    spec = load_task(task)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 7)).astype(np.float32)
    y = rng.integers(0, len(spec.label.classes) if spec.label.kind != "binary" else 2, 120)
    before = get_flat(build_model(spec, 7, seed=3))
    model = build_model(spec, 7, seed=3)
    loss = train(model, spec, x, y, TrainConfig(epochs=1, learning_rate=0.05, batch_size=32, dp_noise_multiplier=5.0,
                                                seed=0))
    after = get_flat(model)
    assert np.isfinite(loss) and np.isfinite(after).all()
    assert np.all(after != before)  # every parameter got noise (a parameter Opacus skipped would not move)
    if spec.label.kind == "ordinal":
        assert torch.all(torch.diff(model.cutpoints()) > 0)  # still ordered
