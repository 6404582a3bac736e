"""FedAvg over encrypted updates: the aggregator adds ciphertexts, the key holder decrypts the sum."""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from federation.crypto import Aggregator, KeyHolder

__all__ = ["EncryptedFedAvg", "ciphertext_of"]


def ciphertext_of(message: Message) -> bytes:
    return message.content["ciphertext"]["ciphertext"].numpy().tobytes()


class EncryptedFedAvg(FedAvg):
    """FedAvg whose sites send ``Enc([w_i * theta_i, w_i])``; only ``aggregate_train`` differs.

    ``w_i = n_i / N`` is site i's share of the training rows. The weighted average is
    ``sum(w_i * theta_i) / sum(w_i)`` (exact even if some sites drop out), from one decryption of
    the encrypted sum, which the key holder grants only over at least ``min_sites`` sites.
    """

    def __init__(self, *, aggregator: Aggregator, key_holder: KeyHolder, n_params: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.aggregator = aggregator
        self.key_holder = key_holder
        self.n_params = n_params
        self.aggregation_seconds: list[float] = []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        started = time.perf_counter()
        summed = self.aggregator.add([ciphertext_of(m) for m in valid])
        self.aggregation_seconds.append(time.perf_counter() - started)
        values = self.key_holder.decrypt_aggregate(summed, length=self.n_params + 1)
        theta = np.asarray(values[: self.n_params]) / values[self.n_params]
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return ArrayRecord([theta]), metrics
