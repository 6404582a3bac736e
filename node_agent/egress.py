"""The node's egress guard: a Flower mod that checks every reply before it leaves the site.

A reply may hold only what the protocol declares: ciphertexts (``ArrayRecord`` "ciphertext" of
uint8 bytes), aggregate numbers from ``DECLARED_METRICS``, the site's id (with its personalisation
and the DP epsilon it applied) or a declared refusal. Anything else is an ``EgressViolation`` and
the reply is replaced by an error. Every declared number then passes the site's small-number rules
(``release``). With ``egress-log`` set in the node config, each outgoing reply is also written to
that folder, for audits and tests.

**Metrics as coarse as counts (the site's ``coarse_metrics`` policy; off by default).** The count rule: no count below the site's ``min_n`` leaves, the
others are rounded to ``k = COUNT_ROUNDING``, so a count is known to ±k/2. The coordinator chooses
the model a site evaluates, so without more, a model that splits on one feature makes ``accuracy × n``
an exact count of a small cell. Hence every held-out metric is released on a grid whose step is k
times the most one patient can move it, so one grid step is worth k patients:

- ``accuracy``, ``top3-accuracy``, ``ece`` and ``log-loss`` are means over the n rows of a per-row
  quantity in [0, B] (ECE: one row moves n·ECE by at most 1, as it moves a cell count; log loss: the
  per-row loss is capped at ``B = RELEASE_LOSS_CAP`` = ln 10, probability of the true class floored
  at 0.1, before averaging). Step ``k·B / n_r``, where ``n_r`` is the released (rounded) n, so the
  grid itself says nothing the released n does not; a multiple of k, so the grids of ``accuracy`` and
  of ``ece``/``log-loss`` (which count the complement) share their edges.
- ``auroc`` is a mean over the positives of a per-positive quantity in [0, 1] and a mean over the
  negatives likewise; one patient moves it by at most 1/m, m = the smaller class. Macro AUROC over
  P classes: a row of class c moves AUROC_c by 1/n_c and each other AUROC_c' by 1/(n − n_c'), so
  1/m = max over c of that sum / P. Step ``k / m_r``, m_r = m rounded down to a multiple of k (a
  count the count rule would release); withheld (NaN) when m_r < min_n, as a metric about fewer
  than min_n patients is.
- ``kappa`` (quadratic) is 1 − D_o/D_e: one row moves it by at most (3 − 2κ)/(n·D_e). Step ``k`` times
  that, with n·D_e/(3 − 2κ) rounded down to a multiple of k; withheld below min_n.

The site computes m and the kappa term with the metrics (``models.training``, keys ``RELEASE_INPUTS``);
``release`` strips them, and a metric whose inputs are missing is withheld, not sent exact.

What this does not do: rounding is not differential privacy. Two metrics of one reply whose grid
edges do not line up (AUROC and accuracy of the same split), or one metric of the same rows under
several models (every round of a run evaluates), can narrow a count below ±k/2, as several rounded
counts of overlapping cells could; the number of such releases is bounded by the approved plan's
rounds. Noise charged to the site's budget ledger is what would bound it in ε.

**The site report** (record ``report`` of a statistics reply; ``node_agent.site_report``) holds only
numbers of a kind ``REPORT_KINDS`` declares, each checked here against its kind's rule: row counts
and quarantine rates as the edges of fixed buckets, decision-quality counts suppressed below ``min_n``
and rounded, rates in [0, 1], the site's own decisions (plans approved, runs accepted and refused:
the coordinator saw each of them anyway) and privacy budget in epsilon.

**The curves** (record ``curves`` of a final evaluation; ``node_agent.curves``): ROC and reliability
counts of a binary view of the global model at the thresholds the protocol fixes, each of a kind
``CURVE_KINDS`` declares (``federation.curves``). The view must be a declared one (``view`` a code of
``VIEW_CODES``, ``view-class`` a class index and only with the ``at-or-above`` view), every count must be
at least ``min_n`` and rounded, every cell between two released counts must hold ``min_n`` patients of
each class, and a bin's mean must lie on its grid (``curve_problem``); otherwise nothing leaves.
"""

from __future__ import annotations

import math
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

from federation.curves import CURVE_KINDS, CURVES_RECORD, curve_problem
from models.training import RELEASE_LOSS_CAP
from node_agent.errors import EgressViolation
from node_agent.policy import SitePolicy
from node_agent.surveillance import CLINIC_SERIES, check_clinic_series

__all__ = ["COUNT_ROUNDING", "DECLARED_CONFIG", "DECLARED_METRICS", "METRIC_GRIDS", "QUARANTINE_EDGES", "RELEASE_INPUTS",
           "REPORT_KINDS", "ROW_EDGES", "check_reply", "make_egress_guard", "metric_step", "release", "reply_snapshot"]

# Held-out metrics of the global model, of the site's personalised model and of a local-only model.
EVALUATION_METRICS = {"auroc", "accuracy", "log-loss", "ece", "n", "top3-accuracy", "kappa"}
PREFIXES = ("", "local-", "personal-")
DECLARED_METRICS = {"num-examples", "train-loss"} | {prefix + name for prefix in PREFIXES for name in EVALUATION_METRICS}
DECLARED_CONFIG = {"site": {"site-id", "personalisation", "dp-epsilon", "audit-head", "inputs", "district",
                            "series-interval"},
                   "refusal": {"site-id", "reason", "audit-head"}}
# Counts that describe held-out rows: rounded to COUNT_ROUNDING before they leave.
EVALUATION_COUNTS = {"n", "local-n", "personal-n"}
COUNT_ROUNDING = 5
PLAINTEXT_ARRAYS_KEY = "arrays"
# What the evaluation computes for the grids below; used by ``release`` and never sent.
RELEASE_INPUTS = {"release-log-loss", "release-auroc-rows", "release-kappa-rows"}
# Metric -> (where its rows come from, per-row bound B, range). "n" means the released held-out n.
METRIC_GRIDS: dict[str, tuple[str, float, tuple[float, float]]] = {
    "accuracy": ("n", 1.0, (0.0, 1.0)),
    "top3-accuracy": ("n", 1.0, (0.0, 1.0)),
    "ece": ("n", 1.0, (0.0, 1.0)),
    "log-loss": ("n", RELEASE_LOSS_CAP, (0.0, RELEASE_LOSS_CAP)),
    "auroc": ("release-auroc-rows", 1.0, (0.0, 1.0)),
    "kappa": ("release-kappa-rows", 1.0, (-1.0, 1.0)),
}
# The site report's buckets: a row count or a quarantine rate leaves as the edges of its bucket.
ROW_EDGES = (0, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
QUARANTINE_EDGES = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
QUALITY_COUNTS = ("decisions", "with-outcome", "referred-with-outcome", "kept-with-outcome", "over-referral",
                  "under-referral", "agreed", "doctor-higher", "doctor-lower")
QUALITY_RATES = ("over-referral-rate", "under-referral-rate", "agreement-rate")
REPORT_KINDS: dict[str, str] = {
    "rows-from": "row-edge", "rows-to": "row-edge", "quarantine-from": "rate-edge", "quarantine-to": "rate-edge",
    "plans-approved": "decisions", "runs-accepted": "decisions", "runs-refused": "decisions",
    "dp-spent": "epsilon", "dp-left": "epsilon", "dp-budget": "epsilon", "period-days": "days",
    **{f"quality-{name}": "count" for name in QUALITY_COUNTS}, **{f"quality-{name}": "rate" for name in QUALITY_RATES},
}


def check_reply(message: Message, *, allow_plaintext_model: bool = False, allow_release_inputs: bool = False) -> None:
    """Raise ``EgressViolation`` unless the reply holds only declared content (and, before ``release``
    removes them, the site-only ``RELEASE_INPUTS`` if ``allow_release_inputs``)."""
    declared = DECLARED_METRICS | ({p + key for p in PREFIXES for key in RELEASE_INPUTS} if allow_release_inputs else set())
    if message.has_error():
        return
    for name, record in message.content.items():
        if isinstance(record, ArrayRecord):
            if name == "ciphertext":
                for key, array in record.items():
                    if key != "ciphertext" or array.dtype != str(np.dtype(np.uint8)):
                        raise EgressViolation(f"array {name}/{key} is not a ciphertext")
            elif name == CLINIC_SERIES:
                pass  # a clinic's own surveillance series: checked against its policy in ``release``
            elif not (allow_plaintext_model and name == PLAINTEXT_ARRAYS_KEY):
                raise EgressViolation(f"undeclared array record {name!r}")
        elif isinstance(record, MetricRecord):
            for key, value in record.items():
                if key not in (REPORT_KINDS if name == "report" else CURVE_KINDS if name == CURVES_RECORD else declared):
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


def _rounded_count(value: float) -> int:
    return int(round(value / COUNT_ROUNDING) * COUNT_ROUNDING)


def metric_step(metric: str, rows: float, *, min_rows: int = 1) -> float | None:
    """The grid step of ``metric`` released about ``rows`` rows (for "n"-based metrics, the released
    n; otherwise the site's exact figure, rounded down here to a multiple of ``COUNT_ROUNDING``), or
    None when it is withheld: fewer than ``max(min_rows, COUNT_ROUNDING)`` rows."""
    source, bound, _ = METRIC_GRIDS[metric]
    if not math.isfinite(rows):
        return None
    counted = rows if source == "n" else math.floor(rows / COUNT_ROUNDING) * COUNT_ROUNDING
    if counted < max(min_rows, COUNT_ROUNDING):
        return None
    return COUNT_ROUNDING * bound / counted


def _on_grid(value: float, step: float | None, bounds: tuple[float, float]) -> float:
    if step is None:
        return math.nan
    if not math.isfinite(value):
        return value  # an undefined metric (one class only) says nothing more than its n
    return min(bounds[1], max(bounds[0], math.floor(value / step + 0.5) * step))


def _release_metrics(metrics: MetricRecord, inputs: dict[str, float], prefix: str, min_n: int) -> None:
    released_n = metrics.get(prefix + "n")
    for metric, (source, _, bounds) in METRIC_GRIDS.items():
        key = prefix + metric
        if key not in metrics:
            continue
        value = float(inputs.get(prefix + "release-log-loss", math.nan)) if metric == "log-loss" else float(metrics[key])
        if source == "n":
            step = None if released_n is None else metric_step(metric, float(released_n))
        else:
            step = metric_step(metric, inputs.get(prefix + source, math.nan), min_rows=min_n)
        metrics[key] = _on_grid(value, step, bounds)


def _report_problem(kind: str, value: float, min_n: int) -> str | None:
    """Why ``value`` may not leave as a number of ``kind`` (``REPORT_KINDS``), or None."""
    if not math.isfinite(value):
        return "is not a finite number"
    rules = {
        "row-edge": (value in ROW_EDGES, "is not a row bucket's edge"),
        "rate-edge": (value in QUARANTINE_EDGES, "is not a quarantine bucket's edge"),
        "count": (value >= min_n and value % COUNT_ROUNDING == 0,
                  f"is below the site's minimum n ({min_n}) or not rounded to {COUNT_ROUNDING}"),
        "rate": (0.0 <= value <= 1.0, "is not a rate"),
        "decisions": (value >= 0 and value == int(value), "is not a count"),
        "epsilon": (value >= 0, "is not an epsilon"),
        "days": (value >= 1 and value == int(value), "is not a number of days"),
    }
    allowed, problem = rules[kind]
    return None if allowed else problem


def release(reply: Message, policy: SitePolicy) -> Message:
    """Apply the site's small-number rules to a reply's declared numbers, in place.

    ``train-loss`` leaves only if the policy allows it. A reply with any count below the site's
    ``min_n`` is refused (``EgressViolation``): the handlers decline such jobs first, this is the
    choke point that holds whatever a handler does. Held-out counts of an evaluation are rounded to
    ``COUNT_ROUNDING``; the protocol's own row counts (``num-examples`` of statistics, training and
    calibration) stay exact, because the coordinator checks the decrypted sums against them. With the
    policy's ``coarse_metrics``, held-out metrics are put on the grids of ``METRIC_GRIDS`` (module
    docstring), NaN where withheld; the site-only ``RELEASE_INPUTS`` are removed either way.
    """
    if reply.has_error():
        return reply
    check_clinic_series(reply, policy)  # a published surveillance series: each count 0 or at least its k
    if "report" in reply.content:  # the site report: each number against its kind's rule, or nothing leaves
        for key, value in reply.content["report"].items():
            problem = _report_problem(REPORT_KINDS[key], float(value), policy.min_n)
            if problem:
                raise EgressViolation(f"site report: {key} = {value} {problem}")
    if CURVES_RECORD in reply.content:  # the curves: counts, cells and means against their rules, or nothing leaves
        problem = curve_problem({k: float(v) for k, v in reply.content[CURVES_RECORD].items()},
                                min_n=policy.min_n, rounding=COUNT_ROUNDING)
        if problem:
            raise EgressViolation(f"curves: {problem}")
    if "metrics" not in reply.content:
        return reply
    metrics = reply.content["metrics"]
    inputs = {}
    for key in [k for k in list(metrics) if k.removeprefix("local-").removeprefix("personal-") in RELEASE_INPUTS]:
        inputs[key] = float(metrics[key])
        del metrics[key]
    if "train-loss" in metrics and not policy.release_train_loss:
        del metrics["train-loss"]
    counts = {k: float(v) for k, v in metrics.items() if k in EVALUATION_COUNTS or k == "num-examples"}
    small = {k: v for k, v in counts.items() if v < policy.min_n}
    if small:
        raise EgressViolation(f"{', '.join(sorted(small))} below the site's minimum n ({policy.min_n}): withheld")
    for key, value in counts.items():
        if key in EVALUATION_COUNTS or reply.metadata.message_type == MessageType.EVALUATE:
            metrics[key] = _rounded_count(value)
    if policy.coarse_metrics:  # the site's choice (SitePolicy.coarse_metrics); otherwise metrics are exact
        for prefix in PREFIXES:
            _release_metrics(metrics, inputs, prefix, policy.min_n)
    return reply


def make_egress_guard(*, log_dir: Path | None = None, allow_plaintext: bool = False,
                      policy_of: Callable[[Context], SitePolicy] | None = None) -> Mod:
    """The guard as a Flower mod. Plaintext models are allowed only if the *node* allows them;
    ``policy_of`` gives the site's policy, whose small-number rules every reply passes (``release``)."""

    def egress_guard(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(message, context)
        check_reply(reply, allow_plaintext_model=allow_plaintext, allow_release_inputs=policy_of is not None)
        if policy_of is not None:
            release(reply, policy_of(context))  # which removes the release inputs
        target = log_dir or context.node_config.get("egress-log")
        if target:
            folder = Path(str(target))
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{uuid.uuid4().hex}.pkl").write_bytes(pickle.dumps(reply_snapshot(reply)))
        return reply

    return egress_guard
