"""Attack (issue 13): the coordinator sets the sites' differential-privacy noise.

On the old main (9d94f00) a node took ε, δ and the clipping norm from the round's config
(``dp-epsilon``, ``dp-delta``, ``dp-max-grad-norm``): a coordinator that sent ``dp-epsilon=1e9``
had the sites train with next to no noise while the run, its tags and its model card all said "DP",
and one that sent ``dp-epsilon=0.01`` imposed noise on sites that had not chosen it.

Now the noise comes from the site's policy only (``node_agent.admission.site_train_config``): with
the site's DP off, a server's ``dp-*`` values add no noise and the reply declares ``dp-epsilon`` 0;
with the site's DP on at ε = 1, the noise multiplier is the one ε = 1 gives, whatever the server sent,
and the reply declares the site's ε.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import MessageType

from models.training import dp_noise_multiplier
from node_agent.admission import admit, site_train_config
from node_agent.client_app import build_client_app
from node_agent.local import load_site_data
from tests.attacks.conftest import (
    call_node,
    job_config,
    node_message,
    site_admin,
)

SITE_DP = {"epsilon_per_run": 1.0, "delta": 1e-3, "max_grad_norm": 1.0, "budget_epsilon": 10.0}


def _server_dp(epsilon: float) -> dict:
    return {"dp-epsilon": epsilon, "dp-delta": 0.5, "dp-max-grad-norm": 1e6}


def _update(site, config, flat) -> tuple[np.ndarray, float]:
    reply = call_node(build_client_app([site], allow_plaintext=True), node_message(MessageType.TRAIN, config, flat))
    assert not reply.has_error() and "refusal" not in reply.content, reply.content
    return reply.content["arrays"].to_numpy_ndarrays()[0], float(reply.content["site"]["dp-epsilon"])


@pytest.mark.parametrize("server_epsilon", [1e9, 0.01])
def test_a_server_epsilon_does_not_turn_dp_on_at_a_site_without_it(server_epsilon, site, referral_spec):
    site_admin(site, referral_spec)
    n_rows = len(load_site_data(site, referral_spec).train_frame)
    config, flat = job_config(referral_spec, site, run_id="server-dp", **_server_dp(server_epsilon))

    admitted = admit(site, config, "train", node_allows_plaintext=True)
    assert not site_train_config(admitted, n_rows).dp_noise_multiplier

    attacked, declared = _update(site, config, flat)
    plain_config, _ = job_config(referral_spec, site, run_id="no-server-dp")
    plain, _ = _update(site, plain_config, flat)
    assert declared == 0.0
    # Same seed, same data, no noise: the very same update as a run whose config names no DP at all.
    np.testing.assert_array_equal(attacked, plain)


def test_a_server_epsilon_does_not_change_the_sites_own_noise(site, referral_spec):
    site_admin(site, referral_spec, dp=SITE_DP)
    config, flat = job_config(referral_spec, site, run_id="weaker-dp", **_server_dp(1e9))
    n_rows = len(load_site_data(site, referral_spec).train_frame)

    noise = site_train_config(admit(site, config, "train", node_allows_plaintext=True), n_rows)
    own = dp_noise_multiplier(epsilon=1.0, delta=1e-3, n=n_rows, batch_size=referral_spec.model.batch_size,
                              epochs=referral_spec.model.local_epochs, rounds=int(config["num-rounds"]))
    assert noise.dp_noise_multiplier == pytest.approx(own)
    assert noise.dp_noise_multiplier > 1.0  # the server's epsilon would give next to none (about 1e-4)
    assert noise.dp_max_grad_norm == 1.0

    _, declared = _update(site, config, flat)
    assert declared == 1.0
