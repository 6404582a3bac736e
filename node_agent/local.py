"""What a site computes on its own data: statistics, local training, evaluation.

Plain functions over the site store; the Flower ClientApp only unpacks messages and calls these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.encoding import Encoder, EncodingParams, SiteStatistics, encode_labels
from models.errors import SiteDataError
from models.nets import build_model, get_flat, set_flat
from models.spec import TaskSpec
from models.training import TrainConfig, evaluate, train
from node_agent.store import SiteStore

__all__ = ["SiteData", "load_site_data", "local_only_metrics", "site_statistics", "train_update"]


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


def evaluate_flat(data: SiteData, params: EncodingParams, flat: np.ndarray) -> dict[str, float]:
    _, _, x_test, y_test = data.encoded(params)
    model = set_flat(build_model(data.spec, x_test.shape[1]), flat)
    return evaluate(model, data.spec, x_test, y_test)


def local_only_metrics(data: SiteData, config: TrainConfig) -> dict[str, float]:
    """A model trained on this site alone (its own encoding), evaluated on its own test split."""
    params = site_statistics(data).encoding_params()
    x, y, x_test, y_test = data.encoded(params)
    model = build_model(data.spec, x.shape[1])
    train(model, data.spec, x, y, config)
    return evaluate(model, data.spec, x_test, y_test)
