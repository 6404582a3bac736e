"""``coordinator.derived_versions.derive_tier_policy_version`` on a version as ``register_outcome`` leaves it
(the logged PyTorch model, the model card in markdown and JSON, per-round and per-site metrics): the
new version keeps the weights, encoding, calibration and metrics, and carries only the new policy."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from coordinator.derived_versions import derive_tier_policy_version, discard_version
from coordinator.outcome import FederationOutcome
from coordinator.registry import register_outcome
from coordinator.service.curves import version_curves
from coordinator.service.versions import ModelRegistry
from federation.curves import read_curves
from federation.errors import RegistryError
from models.encoding import Encoder
from models.errors import BundleError, PolicyError
from models.policy import TierPolicy, load_policy
from node_agent.distribution import load_task_model
from tests.coordinator.service.bundle_registry import untrained_models
from tests.coordinator.service.test_curves import BROKEN
from tests.coordinator.service.test_curves import SITES as CURVES

TASK = "referral_risk"
STRICTER = TierPolicy(tertiary={"triage_at_most": 1, "risk_at_least": 0.5}, county={"triage_at_most": 2, "risk_at_least": 0.15},
                      critical_risk=0.7)


@pytest.fixture()
def registered(tmp_path):
    model = untrained_models()[TASK]
    outcome = FederationOutcome(task=model.spec, encoding=model.encoding, flat=model.flat,
                                n_inputs=Encoder(model.spec, model.encoding).width, calibration=model.calibration,
                                sites={"clinic_a": {"auroc": 0.74, "n": 50.0}, "clinic_b": {"auroc": 0.70, "n": 40.0}},
                                rounds=[{"round": 1, "auroc": 0.66}, {"round": 2, "auroc": 0.71}],
                                site_curves=CURVES | {"clinic_c": BROKEN})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, register_outcome(outcome, tracking_uri=uri, policy=load_policy()), model


def test_the_derived_version_is_the_base_with_the_new_policy(registered, tmp_path):
    import mlflow

    uri, base, model = registered
    derived = derive_tier_policy_version(TASK, base.version, STRICTER, tracking_uri=uri, editor="Commissioner Li",
                                         reason="县级医院床位紧张")
    assert (derived.version, derived.base_version, derived.previous, derived.policy) == ("2", "1", load_policy(), STRICTER)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    old, new = (client.get_model_version(f"fenji-{TASK}", v) for v in ("1", "2"))
    assert new.tags["bundle-sha256"] == derived.bundle_sha256 != old.tags["bundle-sha256"]
    assert {k: new.tags[k] for k in ("derived-from", "change", "change-by", "change-reason", "task", "sites")} == {
        "derived-from": "1", "change": "tier-policy", "change-by": "Commissioner Li", "change-reason": "县级医院床位紧张",
        "task": TASK, "sites": old.tags["sites"]}
    # What a node loads: the digest verified, the same weights, encoding and calibration, the new policy.
    served, cards, policy = load_task_model(uri, TASK, version="2", cache_dir=tmp_path / "node")
    np.testing.assert_array_equal(served.flat, model.flat)
    assert served.encoding == model.encoding and served.calibration == model.calibration and policy == STRICTER
    card, zh = cards["en"], cards["zh-CN"]  # the node has the card in both languages
    assert card.startswith(f"# Model card: fenji-{TASK} version 2")
    assert zh.startswith(f"# 模型说明：fenji-{TASK} 第 2 版") and "## 相对第 1 版的变更：分级策略" in zh
    assert "由 Commissioner Li 修改（理由：县级医院床位紧张）" in zh and "修改前：分诊等级 ≤ 1 级或风险 ≥ 60%" in zh
    assert "风险 ≥ 50%" in zh.split("## 分级策略（治理设置）\n", 1)[1].split("\n\n", 1)[0]
    tier_section = card.split("## Tier policy (governance settings)\n", 1)[1].split("\n\n", 1)[0]
    assert "risk ≥ 50%" in tier_section and "60%" not in tier_section
    assert "## Change from version 1: tier policy" in card and "before: Tertiary if triage level ≤ 1 or risk ≥ 60%" in card
    assert "## Known limits" in card
    # The run: the base's parameters and metric histories; the card's JSON and tier_policy.yaml rewritten.
    old_run, new_run = client.get_run(old.run_id), client.get_run(new.run_id)
    assert new_run.data.params == old_run.data.params and new_run.data.metrics == old_run.data.metrics
    assert [m.value for m in client.get_metric_history(new.run_id, "auroc")] == [0.66, 0.71]
    card_json = mlflow.artifacts.load_dict(f"runs:/{new.run_id}/model_card.json")
    assert card_json["model"]["version"] == "2" and card_json["tier_policy"] == STRICTER.model_dump()
    assert card_json["change"]["previous_tier_policy"] == load_policy().model_dump()
    assert yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{new.run_id}/tier_policy.yaml")) == STRICTER.model_dump()
    assert mlflow.artifacts.load_text(f"runs:/{new.run_id}/task.yaml") == mlflow.artifacts.load_text(f"runs:/{old.run_id}/task.yaml")
    # The sites' curves went to MLflow with the run, and the derived version (the same model) keeps them;
    # clinic_c's numbers break the protocol's rules and are not served.
    curves = [version_curves(ModelRegistry(uri), TASK, v) for v in ("1", "2")]
    assert curves[0].sites == curves[1].sites and sorted(curves[0].sites) == ["clinic_a", "clinic_b"]
    assert [p.tpr for p in curves[0].sites["clinic_a"].roc] == [p.tpr for p in read_curves(CURVES["clinic_a"]).roc]
    # Loading the version through MLflow gives the base's logged model (the same weights).
    mlflow.set_tracking_uri(uri)
    assert mlflow.pytorch.load_model(f"models:/fenji-{TASK}/2") is not None
    # The base's cards, as register_outcome logged them: one per language; a second edit keeps the first's note.
    assert {"model_card.md", "model_card.zh-CN.md"} <= {a.path for a in client.list_artifacts(old.run_id)}
    third = derive_tier_policy_version(TASK, "2", load_policy(), tracking_uri=uri, editor="Commissioner Wang",
                                       reason="恢复默认")
    zh = ModelRegistry(uri).card(TASK, third.version, "zh-CN")[0]
    assert zh.index("## 相对第 1 版的变更") < zh.index("## 相对第 2 版的变更") and "Commissioner Wang" in zh
    discard_version(TASK, third.version, tracking_uri=uri)

    discard_version(TASK, "2", tracking_uri=uri)
    assert [str(v.version) for v in client.search_model_versions(f"name = 'fenji-{TASK}'")] == ["1"]
    assert client.get_run(new.run_id).info.lifecycle_stage == "deleted"


def test_refusals(registered):
    uri, base, _ = registered
    with pytest.raises(PolicyError, match="nothing to change"):
        derive_tier_policy_version(TASK, base.version, load_policy(), tracking_uri=uri, editor="x", reason="same")
    with pytest.raises(PolicyError, match="tertiary risk threshold"):
        derive_tier_policy_version(TASK, base.version, {"tertiary": {"triage_at_most": 1, "risk_at_least": 0.1},
                                                        "county": {"triage_at_most": 2, "risk_at_least": 0.2}},
                                   tracking_uri=uri, editor="x", reason="invalid")
    with pytest.raises(RegistryError, match="has no version 7"):
        derive_tier_policy_version(TASK, "7", STRICTER, tracking_uri=uri, editor="x", reason="missing")
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.create_run(client.get_run(base.run_id).info.experiment_id).info.run_id
    client.create_model_version(f"fenji-{TASK}", f"runs:/{run}/bundle", run_id=run, tags={"bundle-sha256": "0" * 64})
    with pytest.raises(BundleError, match="no serving bundle"):
        derive_tier_policy_version(TASK, "2", STRICTER, tracking_uri=uri, editor="x", reason="no bundle")
    assert len(client.search_model_versions(f"name = 'fenji-{TASK}'")) == 2


def test_an_edit_of_a_version_whose_card_predates_the_change_list_keeps_the_earlier_after(registered):
    """A version derived before cards kept every change (only ``change``): deriving from it again shows
    that earlier change's "after" as the policy it set, not the newest one."""
    import mlflow

    uri, base, _ = registered
    second = derive_tier_policy_version(TASK, base.version, STRICTER, tracking_uri=uri, editor="Li", reason="床位紧张")
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    run_id = client.get_model_version(f"fenji-{TASK}", second.version).run_id
    old_shape = mlflow.artifacts.load_dict(f"runs:/{run_id}/model_card.json")
    old_shape.pop("changes")
    client.log_dict(run_id, old_shape, "model_card.json")
    third = derive_tier_policy_version(TASK, second.version, load_policy(), tracking_uri=uri, editor="Wang", reason="恢复")
    card = ModelRegistry(uri).card(TASK, third.version, "en")[0]
    first_change = card.split("## Change from version 1", 1)[1].split("## Change from version 2", 1)[0]
    assert "after: Tertiary if triage level ≤ 1 or risk ≥ 50%" in first_change, first_change
