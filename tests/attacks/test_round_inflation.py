"""Attack (issue 13): a run accepted for a few rounds asks for more once it is under way.

A DP site sets its noise so that the whole run spends its ε over the rounds the run announced; every
round past them releases another noisy update and spends budget nobody charged. On the old main
(9d94f00) the node kept no record of a run: a run that announced ``num-rounds=2`` could send
``num-rounds=50`` later, or simply a train message for round 3, 4, … and every one was trained and
released (with the noise recomputed for whatever ``num-rounds`` the latest message said).

Now the node's audit log records the rounds each run was accepted with (``job-accepted``), and
``node_agent.admission.admit`` refuses a later message asking for other rounds, or a round past them.

Sent at once, two messages of one run with different ``num-rounds`` both found no record of the run
and were both accepted (each with its own count) until admission held a per-site lock across the
lookup and the record (``test_two_messages_at_once_cannot_both_start_a_run``, written against the
unlocked code first and seen failing).

Two variants got through the first version of that check and are refused too: train rounds
numbered 0 or below, and a message that leaves ``num-rounds`` out (the site computed its noise for a
1-round run then; now it uses the rounds it accepted, and a job must say how many rounds it runs).
"""

from __future__ import annotations

import threading
import time

import pytest
from flwr.app import MessageType

import node_agent.admission as admission

from models.training import dp_noise_multiplier
from node_agent.admission import admit, site_train_config
from node_agent.client_app import build_client_app
from node_agent.errors import PolicyRefusal
from node_agent.local import load_site_data
from tests.attacks.conftest import (
    call_node,
    job_config,
    node_audit_actions,
    node_message,
    site_admin,
)

SITE_DP = {"epsilon_per_run": 1.0, "budget_epsilon": 10.0}


@pytest.fixture()
def accepted_run(site, referral_spec):
    """An approved plan (up to 50 rounds) and a run accepted with 2 rounds, its round 1 trained.
    (The site's DP is off here: admission is the same with it on, and DP-SGD is slower.)"""
    site_admin(site, referral_spec, max_rounds=50)
    app = build_client_app([site], allow_plaintext=True)
    config, flat = job_config(referral_spec, site, run_id="run", num_rounds=2, server_round=1)
    reply = call_node(app, node_message(MessageType.TRAIN, config, flat))
    assert "arrays" in reply.content
    return site, app, flat


def _train(app, spec, site, flat, **keys):
    config, _ = job_config(spec, site, run_id="run", **keys)
    return call_node(app, node_message(MessageType.TRAIN, config, flat))


def _refused(reply) -> str:
    assert not reply.has_error(), reply.error.reason
    assert set(reply.content.keys()) == {"refusal"}, "the site trained a round past the rounds it accepted"
    return str(reply.content["refusal"]["reason"])


def test_more_rounds_announced_mid_run_are_refused(accepted_run, referral_spec):
    site, app, flat = accepted_run
    reason = _refused(_train(app, referral_spec, site, flat, num_rounds=50, server_round=2))
    assert "started with 2 rounds and now asks for 50" in reason
    assert node_audit_actions(site, "job-refused")


def test_a_round_past_the_accepted_rounds_is_refused(accepted_run, referral_spec):
    site, app, flat = accepted_run
    assert "arrays" in _train(app, referral_spec, site, flat, num_rounds=2, server_round=2).content
    reason = _refused(_train(app, referral_spec, site, flat, num_rounds=2, server_round=3))
    assert "round 3 of a run accepted for rounds 1 to 2" in reason


@pytest.mark.parametrize("server_round", [0, -1])
def test_a_round_numbered_below_one_is_refused(server_round, accepted_run, referral_spec):
    site, app, flat = accepted_run
    _refused(_train(app, referral_spec, site, flat, num_rounds=2, server_round=server_round))


def test_leaving_num_rounds_out_does_not_lower_the_noise(site, referral_spec):
    site_admin(site, referral_spec, max_rounds=50, dp=SITE_DP)
    config, _ = job_config(referral_spec, site, run_id="run", num_rounds=2, server_round=1)
    admit(site, config, "train", node_allows_plaintext=True)  # the run is accepted with 2 rounds
    config, _ = job_config(referral_spec, site, run_id="run", num_rounds=None, server_round=2)
    try:
        admitted = admit(site, config, "train", node_allows_plaintext=True)
    except PolicyRefusal:
        return
    n_rows = len(load_site_data(site, referral_spec).train_frame)
    accepted = dp_noise_multiplier(epsilon=1.0, delta=1e-3, n=n_rows, batch_size=referral_spec.model.batch_size,
                                   epochs=referral_spec.model.local_epochs, rounds=2)
    assert site_train_config(admitted, n_rows).dp_noise_multiplier == pytest.approx(accepted)


def test_two_messages_at_once_cannot_both_start_a_run(site, referral_spec, monkeypatch):
    """A coordinator sends round 1 of one run twice at once, announcing 1 round and 50 rounds. The
    lookup is slowed down so both messages are inside admission together, as a busy node would have them."""
    site_admin(site, referral_spec, max_rounds=50, dp=SITE_DP)
    lookup = admission._accepted_run

    def slow_lookup(site_dir, run_id):
        found = lookup(site_dir, run_id)
        time.sleep(0.3)
        return found

    monkeypatch.setattr(admission, "_accepted_run", slow_lookup)
    results: dict[int, object] = {}

    def send(rounds: int) -> None:
        config, _ = job_config(referral_spec, site, run_id="run", num_rounds=rounds, server_round=1)
        try:
            results[rounds] = admit(site, config, "train", node_allows_plaintext=True).rounds
        except PolicyRefusal as exc:
            results[rounds] = exc

    threads = [threading.Thread(target=send, args=(rounds,)) for rounds in (1, 50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accepted = [rounds for rounds, result in results.items() if isinstance(result, int)]
    assert len(accepted) == 1, f"both messages started the run: {results}"
    refused = next(result for result in results.values() if isinstance(result, PolicyRefusal))
    assert f"started with {accepted[0]} rounds" in str(refused)
    assert len(node_audit_actions(site, "job-accepted")) == 1
