"""Attack (review of issue 17): a per-site packing bound as an oracle on the site's own model.

With packed updates, a site refused to encrypt when its trained model left the round's bound. The
bound came from the coordinator's config and was taken as sent, so a coordinator could send one site
a bound of its choosing and read, from refused-or-not, one bit per round about that site's trained
model (a binary search over rounds, with no sum, so no min-sites rule and no DP accounting). Now the
site recomputes the bound from the global model it was sent and refuses any other before it trains
(a declared refusal that depends on nothing at the site), and clips its own values to the bound,
recorded in its audit log, rather than refuse.
"""

from __future__ import annotations

import pytest
from flwr.app import MessageType

from federation.identity import ENROLMENT_FILE
from federation.packing import packing_bound
from keyholder import KeyHolder, KeyHolderState
from node_agent.budget import node_audit
from node_agent import client_app
from node_agent.client_app import build_client_app
from tests.attacks.conftest import call_node, fresh_sites, job_config, node_message, site_admin


@pytest.fixture()
def packed_job(small_federation, referral_spec, tmp_path):
    """A site enrolled with a real key holder and approved for the task, and a packed train job."""
    (site,) = fresh_sites(small_federation[:1], tmp_path / "sites")
    site_admin(site, referral_spec)
    state = KeyHolderState(tmp_path / "keyholder")
    state.init()
    state.enrol(site.name, "INST-A").save(site / ENROLMENT_FILE)
    info = KeyHolder(state, min_sites=1).info()
    config, flat = job_config(referral_spec, site, run_id="bound-probe", plaintext=False)
    config["ckks-context"] = info.public_context_bytes
    config["ckks-context-signature"] = info.signature_bytes
    config["packed-context"] = info.packed_context_bytes
    config["packed-context-signature"] = info.packed_signature_bytes
    return site, config, flat


@pytest.mark.parametrize("bound", [0.5, 4.0, 16.0, 1e6])
def test_a_bound_other_than_the_global_models_is_refused_before_training(packed_job, bound):
    site, config, flat = packed_job
    assert packing_bound(flat) != bound
    config["packing-bound"] = bound
    reply = call_node(build_client_app([site]), node_message(MessageType.TRAIN, config, flat))
    assert "refusal" in reply.content and "packing bound" in str(reply.content["refusal"]["reason"])
    assert "ciphertext" not in reply.content


def test_a_model_that_leaves_the_bound_is_clipped_not_refused(packed_job, monkeypatch):
    site, config, flat = packed_job
    config["packing-bound"] = packing_bound(flat)
    real_train = client_app.train_update

    def trained_past_the_bound(*args, **kwargs):  # as if local training had moved values past it
        trained, n, loss = real_train(*args, **kwargs)
        trained = trained.copy()
        trained[:3] = [100.0, -100.0, 9.0]
        return trained, n, loss

    monkeypatch.setattr(client_app, "train_update", trained_past_the_bound)
    reply = call_node(build_client_app([site]), node_message(MessageType.TRAIN, config, flat))
    assert "refusal" not in reply.content, reply.content
    assert "ciphertext" in reply.content
    clips = [e for e in node_audit(site).entries() if e["action"] == "packing-clip"]
    assert clips and clips[-1]["details"]["bound"] == packing_bound(flat)
    assert clips[-1]["details"]["values"] >= 2
