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


@functools.lru_cache(maxsize=4)
def trained_text_model(task: str, *, rows: int = 900, seed: int = 5) -> TaskModel:
    """A ``*_text`` task's model (e.g. ``referral_risk_text``) trained locally on one synthetic clinic
    with its complaint texts, as ``bench.serving.train_models`` trains the others."""
    import numpy as np

    from models.calibration import calibration_statistics, fit_calibration
    from models.encoding import Encoder, SiteStatistics, encode_labels
    from models.nets import build_model, get_flat
    from models.spec import load_task
    from models.training import TrainConfig, train
    from simulation.synth import ClinicProfile, generate_clinic

    frame = generate_clinic(ClinicProfile(f"text_clinic_{seed}", rows), np.random.default_rng(seed), text_seed=seed)
    spec = load_task(task)
    params = SiteStatistics.from_frame(spec, frame).encoding_params()
    encoder = Encoder(spec, params)
    x, y = encoder.transform(frame), encode_labels(spec, frame)
    model = build_model(spec, encoder.width)
    train(model, spec, x, y, TrainConfig.from_spec(spec, epochs=20))
    calibration = fit_calibration(spec, calibration_statistics(model, spec, x, y))
    return TaskModel(spec, params, get_flat(model), calibration)


def trained_text_advisor(*, text_tasks: tuple[str, ...] = ("referral_risk",)) -> Advisor:
    """The trained advisor with ``text_tasks`` answered by their ``*_text`` models."""
    models = dict(_models())
    for task in text_tasks:
        models[task] = trained_text_model(f"{task}_text")
    return Advisor(models, load_policy("default"))
