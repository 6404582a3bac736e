"""The node's egress guard: a Flower mod that checks every reply before it leaves the site.

A reply may hold only what the protocol declares: ciphertexts (``ArrayRecord`` "ciphertext" of
uint8 bytes), aggregate numbers from ``DECLARED_METRICS`` and the site's id. Anything else is an
``EgressViolation`` and the reply is replaced by an error. With ``egress-log`` set in the node
config, each outgoing reply is also written to that folder, for audits and tests.
"""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable, Mod

from node_agent.errors import EgressViolation

__all__ = ["DECLARED_CONFIG", "DECLARED_METRICS", "check_reply", "make_egress_guard", "reply_snapshot"]

# Held-out metrics of the global model, of the site's personalised model and of a local-only model.
EVALUATION_METRICS = {"auroc", "accuracy", "log-loss", "ece", "n", "top3-accuracy", "kappa"}
DECLARED_METRICS = {"num-examples", "train-loss"} | {
    prefix + name for prefix in ("", "local-", "personal-") for name in EVALUATION_METRICS
}
DECLARED_CONFIG = {"site-id", "personalisation"}
PLAINTEXT_ARRAYS_KEY = "arrays"


def check_reply(message: Message, *, allow_plaintext_model: bool = False) -> None:
    """Raise ``EgressViolation`` unless the reply holds only declared content."""
    if message.has_error():
        return
    for name, record in message.content.items():
        if isinstance(record, ArrayRecord):
            if name == "ciphertext":
                for key, array in record.items():
                    if key != "ciphertext" or array.dtype != str(np.dtype(np.uint8)):
                        raise EgressViolation(f"array {name}/{key} is not a ciphertext")
            elif not (allow_plaintext_model and name == PLAINTEXT_ARRAYS_KEY):
                raise EgressViolation(f"undeclared array record {name!r}")
        elif isinstance(record, MetricRecord):
            for key, value in record.items():
                if key not in DECLARED_METRICS:
                    raise EgressViolation(f"undeclared metric {key!r}")
                if isinstance(value, list):
                    raise EgressViolation(f"metric {key!r} is a list, not one aggregate number")
        elif isinstance(record, ConfigRecord):
            undeclared = set(record.keys()) - DECLARED_CONFIG
            if undeclared:
                raise EgressViolation(f"undeclared config values {sorted(undeclared)}")
        else:
            raise EgressViolation(f"undeclared record {name!r} of type {type(record).__name__}")


def reply_snapshot(message: Message) -> dict:
    """A plain-Python copy of everything a reply carries (for the egress log)."""
    snapshot: dict = {"message_type": message.metadata.message_type, "records": {}}
    for name, record in message.content.items():
        if isinstance(record, ArrayRecord):
            items = {k: {"dtype": a.dtype, "shape": list(a.shape), "data": bytes(a.data)} for k, a in record.items()}
        else:
            items = dict(record.items())
        snapshot["records"][name] = {"type": type(record).__name__, "items": items}
    return snapshot


def make_egress_guard(*, log_dir: Path | None = None, allow_plaintext: bool = False) -> Mod:
    """The guard as a Flower mod. Plaintext models are allowed only if the *node* allows them."""

    def egress_guard(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(message, context)
        check_reply(reply, allow_plaintext_model=allow_plaintext)
        target = log_dir or context.node_config.get("egress-log")
        if target:
            folder = Path(str(target))
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{uuid.uuid4().hex}.pkl").write_bytes(pickle.dumps(reply_snapshot(reply)))
        return reply

    return egress_guard
