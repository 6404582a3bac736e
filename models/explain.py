"""Why a model said what it said: per prediction, how much each feature pushed the output.

A feature's contribution is the change in the model's score (e.g. the referral-risk log-odds) when
that feature alone is set back to the federation's average patient (``Encoder.baseline``): numeric
values to their federated mean, categories and flags to their federated frequencies, "not recorded"
to the federated missing rate. For a logistic model this is exactly the linear SHAP value under
feature independence (``w · (x - mean)`` summed over the feature's encoded columns); for an MLP it is
a one-at-a-time occlusion. Missing values count too: "SpO2 not recorded" is a reason like any other.

A free-text feature is one feature here (all its hashed columns occluded together); which of its
words counted is ``text_word_contributions``, worked out from the record's own text at scoring time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from models.encoding import Encoder
from models.text import Term

__all__ = ["explain_text", "occlusion_contributions", "text_word_contributions"]


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


def text_word_contributions(
    score: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    columns: Sequence[int],
    weights: Sequence[tuple[Term, int, float]],
    *,
    top: int = 5,
    step: float = 0.5,
) -> list[tuple[str, float]]:
    """The words of one record's text that moved its score most: ``[(word, contribution)]``.

    ``x`` is the record's encoded row, ``columns`` its text feature's bucket columns and ``weights``
    what ``TextHasher.weights`` finds in the record's own text, recomputed here and now (no stored
    vocabulary maps buckets back to words). Each bucket's slope is a central difference of the score
    (exact for a logistic model); a term's contribution is its slope times the term's value in the
    row, so terms that collided in one bucket are told apart by their own values. A word or
    character run then gets the sum over the terms it contains (``胸痛`` collects ``胸``, ``痛``
    and ``胸痛``; ``chest pain`` collects both words), and the strongest non-overlapping ones
    are returned, strongest first.
    """
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    used = sorted({bucket for _, bucket, _ in weights})
    if not used:
        return []
    probes = np.repeat(x[None, :], 2 * len(used), axis=0)
    for i, bucket in enumerate(used):
        probes[2 * i, columns[bucket]] += step
        probes[2 * i + 1, columns[bucket]] -= step
    scores = np.asarray(score(probes), dtype=float).reshape(-1)
    slope = dict(zip(used, (scores[0::2] - scores[1::2]) / (2 * step)))
    own: dict[str, float] = {}
    for term, bucket, value in weights:
        own[term.shown] = own.get(term.shown, 0.0) + slope[bucket] * value
    total = {word: sum(c for part, c in own.items() if _inside(part, word)) for word in own}
    chosen: list[tuple[str, float]] = []
    for word in sorted(total, key=lambda w: (-abs(total[w]), -len(w), w)):
        if len(chosen) == top:
            break
        if not any(_inside(word, w) or _inside(w, word) for w, _ in chosen):
            chosen.append((word, total[word]))
    return chosen


def _inside(part: str, word: str) -> bool:
    """``part`` is ``word`` or a piece of it (a whole word of a Latin phrase, a run of characters)."""
    if part == word:
        return True
    if " " in word or part.isascii():
        return f" {part} " in f" {word} "
    return part in word


def explain_text(
    score: Callable[[np.ndarray], np.ndarray], encoder: Encoder, record: Mapping[str, object], *, top: int = 5
) -> dict[str, list[tuple[str, float]]]:
    """Per text feature of ``encoder``'s task, ``text_word_contributions`` for one record."""
    x = encoder.transform(pd.DataFrame([dict(record)]))[0]
    return {name: text_word_contributions(score, x, encoder.text_columns(name), hasher.weights(record.get(name)),
                                          top=top)
            for name, hasher in encoder.hashers.items()}
