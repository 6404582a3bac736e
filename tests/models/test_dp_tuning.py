"""DP-SGD's own training choices (``models.training.dp_train_config``) and its demo-only noise seed.

- The accountant counts the steps training takes: the noise of ``dp_train_config`` spends exactly
  the epsilon asked for over all rounds of ``_train_dp``'s steps, at the tuned expected batch.
- A noise seed makes two DP trainings identical; another seed, or none (noise from the OS), makes
  them differ.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from models.nets import build_model, get_flat
from models.spec import load_task
from models.training import DP_SGD, TrainConfig, _dp_steps, dp_train_config, train


@pytest.mark.parametrize("n, rounds", [(260, 2), (1500, 15), (40, 3)])
def test_the_noise_spends_the_epsilon_over_the_steps_training_takes(n, rounds):
    spec = load_task("diagnosis")
    config = dp_train_config(TrainConfig.from_spec(spec), n=n, epsilon=1.5, delta=1e-4, max_grad_norm=1.0,
                             rounds=rounds)
    assert config.batch_size == min(DP_SGD.batch_size, n) and config.epochs <= spec.model.local_epochs
    sample_rate, steps = _dp_steps(n, config.batch_size, config.epochs)
    accountant = RDPAccountant()
    accountant.history = [(config.dp_noise_multiplier, sample_rate, steps * rounds)]
    assert accountant.get_epsilon(delta=1e-4) == pytest.approx(1.5, abs=0.02)


def _dp_fit(noise_seed: int | None) -> np.ndarray:
    spec = load_task("diagnosis")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = rng.integers(0, len(spec.label.classes), 300)
    config = dp_train_config(TrainConfig.from_spec(spec), n=len(x), epsilon=1.5, delta=1e-4, max_grad_norm=1.0,
                             rounds=3, noise_seed=noise_seed)
    torch.manual_seed(0)  # anything else that might draw from torch's global generator: the same
    model = build_model(spec, x.shape[1], seed=0)
    train(model, spec, x, y, config)
    return get_flat(model)


def test_a_noise_seed_repeats_the_training_and_another_seed_does_not():
    np.testing.assert_array_equal(_dp_fit(5), _dp_fit(5))
    assert not np.array_equal(_dp_fit(5), _dp_fit(6))


def test_without_a_seed_the_noise_differs_every_time():
    assert not np.array_equal(_dp_fit(None), _dp_fit(None))
