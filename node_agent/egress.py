"""The node's egress guard: a Flower mod that checks every reply before it leaves the site.

A reply may hold only what the protocol declares: ciphertexts (``ArrayRecord`` "ciphertext" of
uint8 bytes), aggregate numbers from ``DECLARED_METRICS``, the site's id (with its personalisation
and the DP epsilon it applied) or a declared refusal. Anything else is an ``EgressViolation`` and
the reply is replaced by an error. Every declared number then passes the site's small-number rules
(``release``). With ``egress-log`` set in the node
config, each outgoing reply is also written to that folder, for audits and tests.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
)
from flwr.clientapp.typing import ClientAppCallable, Mod

from node_agent.errors import EgressViolation
from node_agent.policy import SitePolicy

__all__ = ["DECLARED_CONFIG", "DECLARED_METRICS", "check_reply", "make_egress_guard", "release", "reply_snapshot"]

# Held-out metrics of the global model, of the site's personalised model and of a local-only model.
EVALUATION_METRICS = {"auroc", "accuracy", "log-loss", "ece", "n", "top3-accuracy", "kappa"}
DECLARED_METRICS = {"num-examples", "train-loss"} | {
    prefix + name for prefix in ("", "local-", "personal-") for name in EVALUATION_METRICS
}
DECLARED_CONFIG = {"site": {"site-id", "personalisation", "dp-epsilon", "audit-head", "inputs"},
                   "refusal": {"site-id", "reason", "audit-head"}}
# Counts that describe held-out rows: rounded to COUNT_ROUNDING before they leave.
EVALUATION_COUNTS = {"n", "local-n", "personal-n"}
COUNT_ROUNDING = 5
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
            if name not in DECLARED_CONFIG:
                raise EgressViolation(f"undeclared config record {name!r}")
            undeclared = set(record.keys()) - DECLARED_CONFIG[name]
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


def release(reply: Message, policy: SitePolicy) -> Message:
    """Apply the site's small-number rules to a reply's declared numbers, in place.

    ``train-loss`` leaves only if the policy allows it. A reply with any count below the site's
    ``min_n`` is refused (``EgressViolation``): the handlers decline such jobs first, this is the
    choke point that holds whatever a handler does. Held-out counts of an evaluation are rounded to
    ``COUNT_ROUNDING``; the protocol's own row counts (``num-examples`` of statistics, training and
    calibration) stay exact, because the coordinator checks the decrypted sums against them.
    """
    if reply.has_error() or "metrics" not in reply.content:
        return reply
    metrics = reply.content["metrics"]
    if "train-loss" in metrics and not policy.release_train_loss:
        del metrics["train-loss"]
    counts = {k: float(v) for k, v in metrics.items() if k in EVALUATION_COUNTS or k == "num-examples"}
    small = {k: v for k, v in counts.items() if v < policy.min_n}
    if small:
        raise EgressViolation(f"{', '.join(sorted(small))} below the site's minimum n ({policy.min_n}): withheld")
    if reply.metadata.message_type == MessageType.EVALUATE:
        for key, value in counts.items():
            metrics[key] = int(round(value / COUNT_ROUNDING) * COUNT_ROUNDING)
    return reply


def make_egress_guard(*, log_dir: Path | None = None, allow_plaintext: bool = False,
                      policy_of: Callable[[Context], SitePolicy] | None = None) -> Mod:
    """The guard as a Flower mod. Plaintext models are allowed only if the *node* allows them;
    ``policy_of`` gives the site's policy, whose small-number rules every reply passes (``release``)."""

    def egress_guard(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(message, context)
        check_reply(reply, allow_plaintext_model=allow_plaintext)
        if policy_of is not None:
            release(reply, policy_of(context))
        target = log_dir or context.node_config.get("egress-log")
        if target:
            folder = Path(str(target))
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{uuid.uuid4().hex}.pkl").write_bytes(pickle.dumps(reply_snapshot(reply)))
        return reply

    return egress_guard
