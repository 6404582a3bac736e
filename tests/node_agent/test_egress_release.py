"""Suppression at the source: every declared number passes the site's small-number rules
(``release``), and a reply holds only declared records (``check_reply``), refusals included."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from scipy.stats import rankdata

from models.spec import load_task
from models.training import RELEASE_LOSS_CAP, metrics_from_proba, predicted_level
from node_agent.egress import (
    COUNT_ROUNDING,
    check_reply,
    make_egress_guard,
    metric_step,
    release,
)
from node_agent.errors import EgressViolation
from node_agent.policy import SitePolicy


def _reply(content: dict, message_type: str = MessageType.TRAIN) -> Message:
    metadata = Metadata(run_id=1, message_id="", src_node_id=7, dst_node_id=0, reply_to_message_id="m",
                        group_id="", created_at=0.0, ttl=60.0, message_type=message_type)
    return Message(content=RecordDict(content), metadata=metadata)


def _ciphertext() -> ArrayRecord:
    return ArrayRecord({"ciphertext": Array(np.frombuffer(b"\x01\x02\x03", dtype=np.uint8))})


def _train_reply(rows: int = 123, loss: float = 0.41) -> Message:
    return _reply({"ciphertext": _ciphertext(), "metrics": MetricRecord({"num-examples": rows, "train-loss": loss}),
                   "site": ConfigRecord({"site-id": "site_a", "dp-epsilon": 0.0})})


def _evaluate_reply(**metrics: float) -> Message:
    return _reply({"metrics": MetricRecord(metrics), "site": ConfigRecord({"site-id": "site_a"})},
                  MessageType.EVALUATE)


def test_train_loss_is_dropped_by_default():
    reply = release(_train_reply(), SitePolicy())
    metrics = reply.content["metrics"]
    assert "train-loss" not in metrics
    assert metrics["num-examples"] == 123  # the protocol's row count stays exact
    assert "ciphertext" in reply.content


def test_train_loss_leaves_when_the_policy_allows_it():
    metrics = release(_train_reply(loss=0.41), SitePolicy(release_train_loss=True)).content["metrics"]
    assert metrics["train-loss"] == pytest.approx(0.41)
    assert metrics["num-examples"] == 123


@pytest.mark.parametrize(("reply", "named"), [
    (lambda: _train_reply(rows=9), "num-examples"),
    (lambda: _evaluate_reply(**{"n": 9.0, "num-examples": 40, "accuracy": 1.0}), "n"),
    (lambda: _evaluate_reply(**{"n": 40.0, "num-examples": 40, "local-n": 3.0, "local-accuracy": 1.0}), "local-n"),
    (lambda: _evaluate_reply(**{"n": 40.0, "num-examples": 40, "personal-n": 1.0, "personal-log-loss": 0.01}),
     "personal-n"),
], ids=["train-rows", "held-out-n", "local-n", "personal-n"])
def test_a_count_below_min_n_is_refused(reply, named):
    with pytest.raises(EgressViolation, match=f"{named}.*below the site's minimum n \\(10\\)"):
        release(reply(), SitePolicy(min_n=10))


def test_min_n_is_the_sites_own_and_inclusive():
    assert release(_train_reply(rows=10), SitePolicy(min_n=10)).content["metrics"]["num-examples"] == 10
    with pytest.raises(EgressViolation):
        release(_train_reply(rows=49), SitePolicy(min_n=50))


def test_evaluation_counts_are_rounded_to_five_and_train_counts_stay_exact():
    evaluated = {"n": 123.0, "num-examples": 123, "local-n": 122.0, "personal-n": 128.0, "accuracy": 0.8137}
    reply = release(_evaluate_reply(**evaluated), SitePolicy(min_n=10, coarse_metrics=True))
    metrics = reply.content["metrics"]
    assert (metrics["n"], metrics["num-examples"], metrics["local-n"], metrics["personal-n"]) == (125, 125, 120, 130)
    assert metrics["accuracy"] == pytest.approx(20 * 5 / 125)  # on the grid of the released n, step 5/125
    # The default (exact metrics above min n): the counts are rounded, the accuracy is not.
    assert release(_evaluate_reply(**evaluated), SitePolicy(min_n=10)).content["metrics"]["accuracy"] == 0.8137
    assert release(_train_reply(rows=123), SitePolicy()).content["metrics"]["num-examples"] == 123
    stats = _reply({"ciphertext": _ciphertext(), "metrics": MetricRecord({"num-examples": 123}),
                    "site": ConfigRecord({"site-id": "site_a"})}, MessageType.QUERY)
    assert release(stats, SitePolicy()).content["metrics"]["num-examples"] == 123


def test_a_refusal_passes_both_checks_unchanged():
    reply = _reply({"refusal": ConfigRecord({"site-id": "site_a", "reason": "plan not approved"})})
    check_reply(reply)
    assert release(reply, SitePolicy(min_n=1000)) is reply
    assert dict(reply.content["refusal"]) == {"site-id": "site_a", "reason": "plan not approved"}


@pytest.mark.parametrize(("content", "message"), [
    ({"notes": ConfigRecord({"site-id": "site_a"})}, "undeclared config record 'notes'"),
    ({"refusal": ConfigRecord({"site-id": "site_a", "reason": "no", "rows": 7})}, r"undeclared config values \['rows'\]"),
    ({"site": ConfigRecord({"site-id": "site_a", "ages": "34,56"})}, r"undeclared config values \['ages'\]"),
    ({"metrics": MetricRecord({"num-positives": 3})}, "undeclared metric 'num-positives'"),
], ids=["record", "refusal-key", "site-key", "metric"])
def test_check_reply_rejects_undeclared_content(content, message):
    with pytest.raises(EgressViolation, match=message):
        check_reply(_reply(content))


def test_the_guard_applies_the_sites_policy_to_every_reply():
    policy = SitePolicy(min_n=10)
    guard = make_egress_guard(policy_of=lambda context: policy)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    request = _reply({}, MessageType.EVALUATE)
    reply = guard(request, context, lambda message, ctx: _evaluate_reply(**{"n": 47.0, "num-examples": 47,
                                                                           "accuracy": 0.5}))
    assert reply.content["metrics"]["n"] == 45
    with pytest.raises(EgressViolation):
        guard(request, context, lambda message, ctx: _evaluate_reply(**{"n": 4.0, "num-examples": 4}))
    with pytest.raises(EgressViolation, match="undeclared"):
        guard(request, context, lambda message, ctx: _reply({"raw": ConfigRecord({"x": 1})}))


# --- Metrics above min n: on a grid whose step is worth COUNT_ROUNDING patients -----------------------

def _released(metrics: dict, min_n: int = 10) -> dict:
    policy = SitePolicy(min_n=min_n, coarse_metrics=True)
    return dict(release(_evaluate_reply(**metrics), policy).content["metrics"])


@pytest.mark.parametrize(("metric", "extra"), [
    ("accuracy", {}), ("top3-accuracy", {}), ("ece", {}), ("log-loss", {}),
    ("auroc", {"release-auroc-rows": 60.0}), ("kappa", {"release-kappa-rows": 60.0}),
])
def test_a_released_metric_pins_a_count_no_finer_than_the_count_rule(metric, extra):
    """A metric that is ``count × B / rows`` (what a model splitting on one feature makes of it) takes
    one released value for every run of at least COUNT_ROUNDING consecutive counts."""
    n, rows = 200, extra.get(f"release-{metric}-rows", 200.0)
    bound = RELEASE_LOSS_CAP if metric == "log-loss" else 1.0
    key = "release-log-loss" if metric == "log-loss" else metric
    released = []
    for count in range(int(rows) + 1):
        value = count * bound / rows
        released.append(_released({"n": float(n), key: value, metric: value, **extra})[metric])
    runs = [len(list(group)) for _, group in itertools.groupby(released)]
    assert len(runs) > 5
    assert min(runs[1:-1]) >= COUNT_ROUNDING, runs  # the first and last runs are cut by 0 and rows
    assert all(x <= y for x, y in itertools.pairwise(released))


def test_the_grid_follows_the_released_n_and_moves_a_metric_by_at_most_half_a_step():
    for n in (38, 100, 123, 283, 400):
        released_n = round(n / 5) * 5
        assert metric_step("accuracy", released_n) == pytest.approx(5 / released_n)
        assert metric_step("log-loss", released_n) == pytest.approx(5 * math.log(10) / released_n)
        got = _released({"n": float(n), "accuracy": 0.8137, "release-log-loss": 0.4321, "log-loss": 0.4321})
        assert abs(got["accuracy"] - 0.8137) <= 2.5 / released_n + 1e-12
        assert abs(got["log-loss"] - 0.4321) <= 2.5 * math.log(10) / released_n + 1e-12
    # Neighbouring exact n that round to the same released n release on the same grid.
    assert _released({"n": 123.0, "accuracy": 0.5})["accuracy"] == _released({"n": 127.0, "accuracy": 0.5})["accuracy"]


@pytest.mark.parametrize(("rows", "min_n", "step"), [(42.0, 10, 5 / 40), (9.9, 10, None), (14.0, 10, 5 / 10),
                                                      (14.0, 11, None), (math.nan, 10, None)])
def test_auroc_and_kappa_grids_come_from_rows_rounded_down_and_are_withheld_below_min_n(rows, min_n, step):
    assert metric_step("auroc", rows, min_rows=min_n) == (None if step is None else pytest.approx(step))
    got = _released({"n": 200.0, "auroc": 0.83, "release-auroc-rows": rows,
                     "kappa": -0.99, "release-kappa-rows": rows}, min_n=min_n)
    if step is None:
        assert math.isnan(got["auroc"]) and math.isnan(got["kappa"])
    else:
        assert got["auroc"] == pytest.approx(round(0.83 / step) * step)
        assert got["kappa"] == pytest.approx(max(-1.0, round(-0.99 / step) * step))


def test_a_metric_without_its_inputs_is_withheld_not_sent_exact():
    got = _released({"n": 200.0, "auroc": 0.83, "log-loss": 0.41, "kappa": 0.6, "personal-auroc": 0.8,
                     "personal-n": 200.0, "local-accuracy": 0.7})
    assert all(math.isnan(got[k]) for k in ("auroc", "log-loss", "kappa", "personal-auroc"))
    assert math.isnan(got["local-accuracy"])  # no local-n: no grid
    assert math.isnan(_released({"n": 200.0, "auroc": math.nan, "release-auroc-rows": 0.0})["auroc"])


def test_release_inputs_are_removed_and_never_leave_without_the_sites_rules():
    inputs = {"release-log-loss": 0.4, "release-auroc-rows": 50.0, "personal-release-auroc-rows": 50.0,
              "local-release-kappa-rows": 30.0}
    metrics = {"n": 200.0, "num-examples": 200.0, "auroc": 0.8, "personal-n": 200.0, "personal-auroc": 0.8} | inputs
    assert not set(_released(metrics)) & set(inputs)
    with pytest.raises(EgressViolation, match="undeclared metric 'release-"):
        check_reply(_evaluate_reply(**metrics))
    check_reply(_evaluate_reply(**metrics), allow_release_inputs=True)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    request = _reply({}, MessageType.EVALUATE)
    with pytest.raises(EgressViolation, match="undeclared metric"):  # a guard without a policy: fail closed
        make_egress_guard()(request, context, lambda message, ctx: _evaluate_reply(**metrics))
    reply = make_egress_guard(policy_of=lambda ctx: SitePolicy())(
        request, context, lambda message, ctx: _evaluate_reply(**metrics))
    assert set(reply.content["metrics"].keys()) == {"n", "num-examples", "auroc", "personal-n", "personal-auroc"}


def _auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUROC (ties count one half), as sklearn's, fast enough to call per row."""
    ranks, n_pos = rankdata(score), int(positive.sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(score) - n_pos)))


def _kappa(y: np.ndarray, predicted: np.ndarray, k: int) -> float:
    """Quadratic-weighted kappa, as sklearn's ``cohen_kappa_score(weights="quadratic")``."""
    observed = np.zeros((k, k))
    np.add.at(observed, (y, predicted), 1.0)
    weights = np.subtract.outer(np.arange(k), np.arange(k)) ** 2
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / len(y)
    return float(1 - (weights * observed).sum() / (weights * expected).sum())


def _worst_move(metric, y: np.ndarray, k: int) -> float:
    """The most one row's label can move ``metric(labels)`` (every row, every other label)."""
    base, worst = metric(y), 0.0
    for i in range(len(y)):
        for label in set(range(k)) - {y[i]}:
            other = y.copy()
            other[i] = label
            worst = max(worst, abs(metric(other) - base))
    return worst


@pytest.mark.parametrize("task", ["referral_risk", "diagnosis", "triage"])
def test_the_sites_rows_bound_how_far_one_patient_moves_auroc_and_kappa(task):
    spec = load_task(task)
    rng = np.random.default_rng(3)
    k, n = len(spec.label.classes), 60
    y = rng.choice(k, size=n, p=np.linspace(1, 3, k) / np.linspace(1, 3, k).sum())
    proba = rng.dirichlet(np.ones(k), size=n)
    proba[np.arange(n), y] += 0.4  # a model better than chance
    proba /= proba.sum(axis=1, keepdims=True)
    out = metrics_from_proba(spec, proba, y)
    if k == 2:
        assert out["release-auroc-rows"] == min(np.bincount(y))
        auroc = lambda labels: _auroc(labels == 1, proba[:, 1])
    else:
        def auroc(labels):
            return np.mean([_auroc(labels == c, proba[:, c]) for c in range(k) if 0 < (labels == c).sum() < n])
    assert auroc(y) == pytest.approx(out["auroc"])
    assert _worst_move(auroc, y, k) <= 1 / out["release-auroc-rows"] + 1e-12
    if spec.label.kind == "ordinal":
        predicted = predicted_level(proba)
        assert _kappa(y, predicted, k) == pytest.approx(out["kappa"])
        assert _worst_move(lambda labels: _kappa(labels, predicted, k), y, k) <= 1 / out["release-kappa-rows"] + 1e-12
    assert 0 <= out["release-log-loss"] <= min(out["log-loss"], RELEASE_LOSS_CAP)
