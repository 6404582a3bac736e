"""Under DP a site takes a larger step (``models.training.DP_SGD``), never beyond the learning rate
its admin approved for the plan: the bound is the site's, whoever asks for the step."""

from __future__ import annotations

from models.training import DP_SGD
from node_agent.admission import admit, site_train_config
from node_agent.local import load_site_data
from node_agent.policy import load_site_policy, save_site_policy
from tests.attacks.conftest import job_config, site_admin

SITE_DP = {"epsilon_per_run": 1.0, "delta": 1e-3, "max_grad_norm": 1.0, "budget_epsilon": 100.0}


def _dp_rate(site, spec, run_id: str) -> float:
    config, _ = job_config(spec, site, run_id=run_id)
    n = len(load_site_data(site, spec).train_frame)
    return site_train_config(admit(site, config, "train", node_allows_plaintext=True), n).learning_rate


def test_the_dp_step_stays_within_the_approved_learning_rate(site, referral_spec):
    policy = site_admin(site, referral_spec, dp=SITE_DP)
    rate = referral_spec.model.learning_rate
    assert DP_SGD.learning_rate_scale > 1
    assert _dp_rate(site, referral_spec, "roomy") == rate * DP_SGD.learning_rate_scale  # a generous bound
    (plan,) = policy.approved_plans.values()
    plan.bounds.max_learning_rate = rate * 1.2  # the admin approves little more than the plan's own rate
    save_site_policy(site, policy)
    assert load_site_policy(site).approved_plans == policy.approved_plans
    assert _dp_rate(site, referral_spec, "tight") == rate * 1.2
