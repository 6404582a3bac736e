"""A real ``models.advisor.Advisor``: the three clinical models trained (locally, quickly) on one
synthetic clinic, with real encodings, calibration and the default tier policy."""

from __future__ import annotations

import functools

import numpy as np

from federation.synth import ClinicProfile, generate_clinic
from models.advisor import Advisor, TaskModel
from models.calibration import calibration_statistics, fit_calibration
from models.encoding import Encoder, SiteStatistics, encode_labels
from models.nets import build_model, get_flat
from models.policy import load_policy
from models.spec import load_task
from models.training import TrainConfig, train


@functools.lru_cache(maxsize=1)
def _models() -> dict[str, TaskModel]:
    frame = generate_clinic(ClinicProfile("serve_test", 900), np.random.default_rng(5))
    models = {}
    for task in ("triage", "diagnosis", "referral_risk"):
        spec = load_task(task)
        params = SiteStatistics.from_frame(spec, frame).encoding_params()
        encoder = Encoder(spec, params)
        x, y = encoder.transform(frame), encode_labels(spec, frame)
        model = build_model(spec, encoder.width)
        train(model, spec, x, y, TrainConfig.from_spec(spec, epochs=20))
        calibration = fit_calibration(spec, calibration_statistics(model, spec, x, y))
        models[task] = TaskModel(spec, params, get_flat(model), calibration)
    return models


def trained_advisor() -> Advisor:
    return Advisor(_models(), load_policy("default"))
