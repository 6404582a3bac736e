"""The site policy: plans identified by digest, nothing approved by default, bounds enforced, and a
broken policy file never read as "anything goes"."""

from __future__ import annotations

import json

import pytest
from flwr.app import ConfigRecord

from models.spec import TaskSpec, load_task
from node_agent.admission import admit
from node_agent.errors import PolicyRefusal, SiteDataError
from node_agent.policy import (
    POLICY_FILE,
    PlanBounds,
    SitePolicy,
    load_site_policy,
    plan_digest,
    save_site_policy,
)


def _changed(spec: TaskSpec, edit) -> TaskSpec:
    data = spec.model_dump(mode="json")
    edit(data)
    return TaskSpec.model_validate(data)


def test_digest_is_stable_and_independent_of_key_order(referral_spec):
    digest = plan_digest(referral_spec)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert plan_digest(load_task("referral_risk")) == digest
    # The node rebuilds the spec from the round's task-json: the same plan must give the same digest.
    assert plan_digest(TaskSpec.model_validate_json(referral_spec.model_dump_json())) == digest
    reordered = dict(reversed(list(referral_spec.model_dump(mode="json").items())))
    assert plan_digest(TaskSpec.model_validate(reordered)) == digest


@pytest.mark.parametrize("edit", [
    lambda d: d["model"].update(family="mlp"),
    lambda d: d["model"].update(learning_rate=0.06),
    lambda d: d["model"].update(hidden=[64]),
    lambda d: d["features"].pop(),
    lambda d: d["features"][0].update(max=(d["features"][0].get("max") or 0) + 1),
    lambda d: d["label"].update(description="something else"),
    lambda d: d.update(description="another plan"),
    lambda d: d.update(name="referral_risk_v2"),
], ids=["family", "learning-rate", "hidden", "feature-dropped", "feature-range", "label", "description", "name"])
def test_any_change_to_the_spec_is_another_plan(referral_spec, edit):
    assert plan_digest(_changed(referral_spec, edit)) != plan_digest(referral_spec)


def test_default_policy_approves_nothing(referral_spec, tmp_path):
    policy = load_site_policy(tmp_path)  # no policy.json: the default
    assert policy == SitePolicy() and policy.approved_plans == {}
    assert not policy.dp.enabled and policy.min_n >= 1 and not policy.release_train_loss
    with pytest.raises(PolicyRefusal, match="plan not approved"):
        policy.check_job(referral_spec, {"num-rounds": 1})
    assert not (tmp_path / POLICY_FILE).exists()


def test_an_approved_plan_runs_within_its_bounds_and_no_other(referral_spec):
    policy = SitePolicy()
    digest = policy.approve(referral_spec, by="Dr Wang",
                            bounds=PlanBounds(max_rounds=5, max_local_epochs=8, max_learning_rate=0.1))
    assert digest == plan_digest(referral_spec)
    assert policy.check_job(referral_spec, {"num-rounds": 5, "epochs": 8, "learning-rate": 0.1}) == digest
    assert policy.check_job(referral_spec, {}) == digest  # the spec's own 5 local epochs are within 8
    other = _changed(referral_spec, lambda d: d["model"].update(family="mlp"))
    with pytest.raises(PolicyRefusal, match="plan not approved"):
        policy.check_job(other, {"num-rounds": 1})


@pytest.mark.parametrize(("config", "reason"), [
    ({"num-rounds": 6}, "6 rounds, at most 5"),
    ({"num-rounds": 2, "epochs": 9}, "9 local epochs, at most 8"),
    ({"num-rounds": 2, "learning-rate": 0.2}, "learning rate 0.2, at most 0.1"),
])
def test_jobs_outside_the_bounds_are_refused(referral_spec, config, reason):
    policy = SitePolicy()
    policy.approve(referral_spec, by="Dr Wang", bounds=PlanBounds(max_rounds=5, max_local_epochs=8,
                                                                  max_learning_rate=0.1))
    with pytest.raises(PolicyRefusal, match=f"outside its bounds: {reason}"):
        policy.check_job(referral_spec, config)


def test_the_specs_own_epochs_count_when_the_round_names_none(referral_spec):
    policy = SitePolicy()
    policy.approve(referral_spec, by="Dr Wang", bounds=PlanBounds(max_local_epochs=referral_spec.model.local_epochs - 1))
    with pytest.raises(PolicyRefusal, match="local epochs"):
        policy.check_job(referral_spec, {"num-rounds": 1})


def test_policy_round_trips_through_its_file(referral_spec, tmp_path):
    policy = SitePolicy(min_n=25, release_train_loss=True)
    policy.approve(referral_spec, by="Dr Wang", bounds=PlanBounds(max_rounds=3))
    policy.dp.enabled = True
    save_site_policy(tmp_path, policy)
    assert load_site_policy(tmp_path) == policy
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, replaced whole


@pytest.mark.parametrize("text", [
    "{not json",
    "",
    "[]",
    "null",
    json.dumps({"min_n": 0}),
    json.dumps({"dp": {"enabled": True, "delta": 2}}),
    json.dumps({"approve_everything": True}),
    json.dumps({"approved_plans": {"abc": {"task": "x"}}}),
], ids=["garbage", "empty", "list", "null", "min-n-0", "delta-2", "unknown-key", "plan-without-fields"])
def test_a_broken_policy_file_is_an_error_never_anything_goes(referral_spec, tmp_path, text):
    (tmp_path / POLICY_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(SiteDataError, match="site policy .* is not valid"):
        load_site_policy(tmp_path)
    # The node's admission reads the same file: the job fails, it is not run under a default.
    config = ConfigRecord({"task-json": referral_spec.model_dump_json(), "run-id": "r1", "num-rounds": 1})
    with pytest.raises(SiteDataError):
        admit(tmp_path, config, "evaluate")
    assert (tmp_path / POLICY_FILE).read_text(encoding="utf-8") == text
