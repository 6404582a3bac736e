"""Attack (found in review, issue 12): the coordinator sends different inputs to the sites of one sum.

The query label bound run, phase, round, task and ε, but not what each site was sent. A coordinator
that sends the target site a normal train message and the other sites ``total-examples = 1e30``
(their weight becomes ~0) or ``learning-rate = 0`` (their update becomes the global model it chose)
gets an honest 3-site sum that is the target's update alone: on the code before the fix, every
site's tags were honest and the key holder released it (recovered to 4.7e-9).

Now each site binds the digest of its inputs (``federation.tags.inputs_digest``: the config and the
arrays it answered) into its label. Sites sent different inputs carry different digests: whichever
digest the coordinator claims, the other sites' tags do not add up, and the sum is refused. A zero
learning rate or zero epochs is also outside every approved plan.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from coordinator.aggregator import Aggregator
from federation.crypto import encrypt_contribution, load_public_context
from federation.errors import AggregateCheckError
from federation.keyholder_api import DecryptRequest
from federation.tags import QueryLabel, inputs_digest

N = 40


def _config(**changes) -> dict:
    return {"run-id": "r1", "task-name": "referral_risk", "server-round": 1, "total-examples": 300.0,
            "learning-rate": 0.1} | changes


@pytest.mark.parametrize("skewed", [{"total-examples": 1e30}, {"learning-rate": 0.0}])
def test_a_sum_of_sites_sent_different_inputs_is_never_released(enrolled_key_holder, skewed):
    key_holder, enrolments = enrolled_key_holder(3)
    context = load_public_context(key_holder.public_context)
    flat = np.random.default_rng(0).normal(size=N)
    base = QueryLabel("r1", "train", 1, "referral_risk")
    target_inputs = inputs_digest(_config(), [flat])
    other_inputs = inputs_digest(_config(**skewed), [flat])
    assert target_inputs != other_inputs
    rng = np.random.default_rng(1)
    target = rng.normal(size=N)
    blobs = [encrypt_contribution(context, target, site_key=enrolments["site_0"].site_key_bytes,
                                  label=replace(base, inputs=target_inputs))]
    for site in ("site_1", "site_2"):  # weight ~0: their part of the sum is ~0
        blobs.append(encrypt_contribution(context, np.zeros(N), site_key=enrolments[site].site_key_bytes,
                                          label=replace(base, inputs=other_inputs)))
    summed = Aggregator(key_holder.public_context).add(blobs)
    for claimed, round_ in ((target_inputs, 1), (other_inputs, 2)):
        request = DecryptRequest.of(replace(base, inputs=claimed, round=round_), cohort=list(enrolments), length=N,
                                    scale_bits=40)
        with pytest.raises(AggregateCheckError):
            key_holder.decrypt_aggregate(summed, request)


def test_sites_sent_the_same_inputs_are_summed(enrolled_key_holder):
    key_holder, enrolments = enrolled_key_holder(3)
    context = load_public_context(key_holder.public_context)
    flat = np.random.default_rng(0).normal(size=N)
    label = QueryLabel("r1", "train", 1, "referral_risk", inputs=inputs_digest(_config(), [flat]))
    updates = [np.random.default_rng(i).normal(size=N) for i in range(3)]
    blobs = [encrypt_contribution(context, u, site_key=e.site_key_bytes, label=label)
             for u, e in zip(updates, enrolments.values())]
    values = key_holder.decrypt_aggregate(Aggregator(key_holder.public_context).add(blobs),
                                          DecryptRequest.of(label, cohort=list(enrolments), length=N, scale_bits=40))
    np.testing.assert_allclose(values, np.sum(updates, axis=0), atol=1e-6)


def test_a_zero_learning_rate_or_zero_epochs_is_outside_every_plan(referral_spec):
    from node_agent.errors import PolicyRefusal
    from node_agent.policy import SitePolicy

    policy = SitePolicy()
    policy.approve(referral_spec, by="admin")
    for bad in ({"learning-rate": 0.0}, {"epochs": 0}):
        with pytest.raises(PolicyRefusal, match="outside its bounds"):
            policy.check_job(referral_spec, {"num-rounds": 2} | bad)
