"""Why a model said what it said: per prediction, how much each feature pushed the output.

A feature's contribution is the change in the model's score (e.g. the referral-risk log-odds) when
that feature alone is set back to the federation's average patient (``Encoder.baseline``): numeric
values to their federated mean, categories and flags to their federated frequencies, "not recorded"
to the federated missing rate. For a logistic model this is exactly the linear SHAP value under
feature independence (``w · (x - mean)`` summed over the feature's encoded columns); for an MLP it is
a one-at-a-time occlusion. Missing values count too: "SpO2 not recorded" is a reason like any other.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["occlusion_contributions"]


def occlusion_contributions(
    score: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    baseline: np.ndarray,
    slices: dict[str, list[int]],
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(scores (n,), contributions (n, n_features), feature names)`` for encoded rows ``x``."""
    x = np.asarray(x, dtype=np.float32)
    names = [name for name, cols in slices.items() if cols]
    n = len(x)
    stacked = np.repeat(x[None, :, :], len(names), axis=0)  # (F, n, width)
    for f, name in enumerate(names):
        cols = slices[name]
        stacked[f][:, cols] = baseline[cols]
    full = np.asarray(score(x), dtype=float)
    occluded = np.asarray(score(stacked.reshape(len(names) * n, -1)), dtype=float).reshape(len(names), n)
    return full, (full[None, :] - occluded).T, names
