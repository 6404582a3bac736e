"""What a site computes on its own data: statistics, local training, evaluation.

Plain functions over the site store; the Flower ClientApp only unpacks messages and calls these.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from models.calibration import Calibration, calibration_statistics, fit_calibration
from models.encoding import Encoder, EncodingParams, SiteStatistics, encode_labels
from models.nets import build_model, get_flat, set_flat
from models.spec import TaskSpec
from models.training import TrainConfig, evaluate, train
from node_agent.errors import SiteDataError
from node_agent.store import SiteStore

__all__ = [
    "Personalisation",
    "SiteData",
    "calibration_update",
    "evaluate_flat",
    "load_site_data",
    "local_only_metrics",
    "personalise",
    "site_statistics",
    "train_update",
]


@dataclass
class SiteData:
    """A site's train and test splits of one task (never leaves the node)."""

    site_id: str
    spec: TaskSpec
    train_frame: object
    test_frame: object

    def encoded(self, params: EncodingParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        encoder = Encoder(self.spec, params)
        return (
            encoder.transform(self.train_frame), encode_labels(self.spec, self.train_frame),
            encoder.transform(self.test_frame), encode_labels(self.spec, self.test_frame),
        )


def load_site_data(site_dir: Path, spec: TaskSpec) -> SiteData:
    with SiteStore(site_dir, read_only=True) as store:
        train_frame = store.load(spec, split="train")
        test_frame = store.load(spec, split="test")
        site_id = store.site_id
    if len(train_frame) == 0:
        raise SiteDataError(f"site {site_id!r} has no training rows for task {spec.name!r}")
    return SiteData(site_id, spec, train_frame, test_frame)


def site_statistics(data: SiteData) -> SiteStatistics:
    return SiteStatistics.from_frame(data.spec, data.train_frame)


def train_update(
    data: SiteData, params: EncodingParams, global_flat: np.ndarray, config: TrainConfig
) -> tuple[np.ndarray, int, float]:
    """Train the global model locally; return (new flat parameters, examples used, last loss)."""
    x, y, _, _ = data.encoded(params)
    model = set_flat(build_model(data.spec, x.shape[1]), global_flat)
    loss = train(model, data.spec, x, y, config)
    return get_flat(model), len(x), loss


def evaluate_flat(data: SiteData, params: EncodingParams, flat: np.ndarray,
                  calibration: Calibration | None = None) -> dict[str, float]:
    _, _, x_test, y_test = data.encoded(params)
    model = set_flat(build_model(data.spec, x_test.shape[1]), flat)
    return evaluate(model, data.spec, x_test, y_test, calibration)


def calibration_update(data: SiteData, params: EncodingParams, flat: np.ndarray) -> np.ndarray:
    """This site's share of the federated calibration statistics (on its training split)."""
    x, y, _, _ = data.encoded(params)
    model = set_flat(build_model(data.spec, x.shape[1]), flat)
    return calibration_statistics(model, data.spec, x, y)


@dataclass
class Personalisation:
    """The site's own adaptation of the global model; it never leaves the site."""

    choice: str  # "global", "local-calibration", "fine-tune (mu=...)"
    model: nn.Module
    calibration: Calibration
    validation_log_loss: dict[str, float]


def _validation_mask(frame: pd.DataFrame, fraction: float = 0.2) -> np.ndarray:
    keys = pd.util.hash_pandas_object(frame["record_id"].astype(str), index=False).to_numpy()
    return (keys % 1000) < int(fraction * 1000)


def personalise(
    data: SiteData, params: EncodingParams, flat: np.ndarray, calibration: Calibration, config: TrainConfig,
    *, proximal_mus: tuple[float, ...] = (1.0, 0.1),
) -> Personalisation:
    """Adapt the global model to this site, if that helps on the site's own validation rows.

    Candidates: the global model with the federated calibration; the global model with a
    calibration refitted on this site's rows (a site-level intercept and slope, or temperature);
    the global model with only its intercepts (an ordinal model's cut points) refitted here; and the
    global model fine-tuned here with a proximal pull towards it (Ditto-style, one per
    ``proximal_mus``). The one with the lowest log loss on a held-back fifth of the site's training
    rows wins and is then refitted on all of them. Only this site's rows are used.
    """
    spec = data.spec
    x, y, _, _ = data.encoded(params)
    val = _validation_mask(data.train_frame)
    if val.sum() < 20 or (~val).sum() < 20:
        val = np.zeros(len(x), dtype=bool)
    global_model = set_flat(build_model(spec, x.shape[1]), flat)

    def fine_tune(mu: float):
        def fit(xf: np.ndarray, yf: np.ndarray) -> tuple[nn.Module, Calibration]:
            tuned, cfg = copy.deepcopy(global_model), copy.copy(config)
            cfg.proximal_mu = mu
            train(tuned, spec, xf, yf, cfg)
            return tuned, Calibration()
        return fit

    def refit_offsets(xf: np.ndarray, yf: np.ndarray) -> tuple[nn.Module, Calibration]:
        # Only the intercepts (and an ordinal model's cut points) move: the site's own prevalence and
        # triage habits, with the federated feature weights kept.
        tuned, cfg = copy.deepcopy(global_model), copy.copy(config)
        for name, parameter in tuned.named_parameters():
            parameter.requires_grad_(not name.endswith("weight"))
        cfg.weight_decay = 0.0
        train(tuned, spec, xf, yf, cfg)
        for parameter in tuned.parameters():
            parameter.requires_grad_(True)
        return tuned, calibration if spec.label.kind != "binary" else Calibration()

    makers = {
        "global": lambda xf, yf: (global_model, calibration),
        "site-intercepts": refit_offsets,
        "local-calibration": lambda xf, yf: (
            global_model, fit_calibration(spec, calibration_statistics(global_model, spec, xf, yf))),
        **{f"fine-tune (mu={mu:g})": fine_tune(mu) for mu in proximal_mus},
    }
    scores: dict[str, float] = {}
    choice = "global"
    if val.any():
        for name, make in makers.items():
            model, cal = make(x[~val], y[~val])
            scores[name] = evaluate(model, spec, x[val], y[val], cal)["log-loss"]
        choice = min(scores, key=lambda k: (scores[k], k != "global"))
    model, cal = makers[choice](x, y)
    return Personalisation(choice, model, cal, scores)


def local_only_metrics(data: SiteData, config: TrainConfig) -> dict[str, float]:
    """A model trained on this site alone (its own encoding), evaluated on its own test split."""
    params = site_statistics(data).encoding_params()
    x, y, x_test, y_test = data.encoded(params)
    model = build_model(data.spec, x.shape[1])
    train(model, data.spec, x, y, config)
    return evaluate(model, data.spec, x_test, y_test)
