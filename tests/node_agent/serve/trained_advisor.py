"""A real ``models.advisor.Advisor``: the three clinical models trained (locally, quickly) on one
synthetic clinic, with real encodings, calibration and the default tier policy (the same models the
serving benchmark serves: ``bench.serving.train_models``)."""

from __future__ import annotations

import functools

from bench.serving import train_models
from models.advisor import Advisor, TaskModel
from models.policy import load_policy


@functools.lru_cache(maxsize=1)
def _models() -> dict[str, TaskModel]:
    return train_models(rows=900, seed=5)


def trained_advisor() -> Advisor:
    return Advisor(_models(), load_policy("default"))
