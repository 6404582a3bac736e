"""The demo's site-side DP noise seed (``DPPolicy.noise_seed``): the site's own, never the server's.

- Only the site's policy sets it: whatever a coordinator puts in the round's config (a ``seed``, a
  ``dp-noise-seed``), a site without a noise seed trains with noise from the OS, and a seeded site's
  noise seed does not change with the server's ``seed``.
- It is mixed with the run, the round and the site: no two rounds reuse the same noise.
- ``fenji node up`` refuses to start a clinic whose policy has one, before anything starts.
"""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from fenji.cli import app
from models.encoding import EncodingParams
from models.errors import ExitCode
from node_agent.admission import admit, site_train_config
from node_agent.local import load_site_data, train_update
from tests.attacks.conftest import job_config, site_admin

SITE_DP = {"epsilon_per_run": 1.0, "delta": 1e-3, "max_grad_norm": 1.0, "budget_epsilon": 100.0}
SERVER_SEEDS = {"dp-noise-seed": 7, "noise-seed": 7, "dp-seed": 7}


def _config(site, spec, *, run_id: str, server_round: int = 1, **extra):
    config, flat = job_config(spec, site, run_id=run_id, server_round=server_round, **extra)
    return site_train_config(admit(site, config, "train", node_allows_plaintext=True),
                             len(load_site_data(site, spec).train_frame)), config, flat


def _update(site, spec, config, train_config, flat) -> np.ndarray:
    """The site's update as its train handler computes it (one message can be answered only once)."""
    params = EncodingParams.from_dict(json.loads(str(config["encoding"])))
    return train_update(load_site_data(site, spec), params, flat, train_config)[0]


def test_the_server_cannot_seed_the_noise_of_a_site_without_a_seed(site, referral_spec):
    site_admin(site, referral_spec, dp=SITE_DP)
    train_config, config, flat = _config(site, referral_spec, run_id="server-seeds", **SERVER_SEEDS)
    assert train_config.dp_noise_multiplier > 0 and train_config.dp_noise_seed is None
    # The same round twice: noise from the OS, so two different updates.
    update = _update(site, referral_spec, config, train_config, flat)
    assert not np.array_equal(update, _update(site, referral_spec, config, train_config, flat))


def test_the_servers_seed_does_not_move_a_seeded_sites_noise(site, referral_spec):
    site_admin(site, referral_spec, dp=SITE_DP | {"noise_seed": 11})
    own, config, flat = _config(site, referral_spec, run_id="seeded", seed=0)
    other, _, _ = _config(site, referral_spec, run_id="seeded", seed=12345, **SERVER_SEEDS)
    assert own.dp_noise_seed is not None and own.dp_noise_seed == other.dp_noise_seed
    # Same run, round and site: the very same update, twice.
    update = _update(site, referral_spec, config, own, flat)
    np.testing.assert_array_equal(update, _update(site, referral_spec, config, other, flat))


def test_the_seed_is_mixed_with_the_round_and_the_run(site, referral_spec):
    site_admin(site, referral_spec, dp=SITE_DP | {"noise_seed": 11})
    first, _, _ = _config(site, referral_spec, run_id="mixed", server_round=1)
    second, _, _ = _config(site, referral_spec, run_id="mixed", server_round=2)
    other_run, _, _ = _config(site, referral_spec, run_id="another", server_round=1)
    assert len({first.dp_noise_seed, second.dp_noise_seed, other_run.dp_noise_seed}) == 3
    site_admin(site, dp=SITE_DP | {"noise_seed": 12})
    reseeded, _, _ = _config(site, referral_spec, run_id="mixed", server_round=1)
    assert reseeded.dp_noise_seed != first.dp_noise_seed


def test_node_up_refuses_a_clinic_whose_policy_seeds_its_noise(site, tmp_path):
    site_admin(site, dp=SITE_DP | {"noise_seed": 0})
    # The refusal comes before any file is read or process started: the TLS files need not exist.
    result = CliRunner().invoke(app, ["node", "up", "--site-dir", str(site), "--superlink", "127.0.0.1:1",
                                      "--root-certificates", str(tmp_path / "ca.crt"),
                                      "--auth-key", str(tmp_path / "key"), "--no-serve"])
    assert result.exit_code == ExitCode.PRIVACY, result.output
    assert "noise_seed" in result.output and "predict the noise" in " ".join(result.output.split())


def _deployment_call(site, message):
    """Run ``message`` through the ClientApp as a SuperNode on the deployment engine does: no
    simulation partitions, the site folder from the node's own config."""
    from flwr.app import Context, RecordDict

    from node_agent.client_app import build_client_app

    context = Context(run_id=1, node_id=1, node_config={"site-dir": str(site)}, state=RecordDict(), run_config={})
    return build_client_app()(message, context)


def test_a_node_on_the_deployment_engine_refuses_every_job_while_its_policy_seeds_the_noise(site, referral_spec):
    from node_agent.client_app import build_client_app
    from tests.attacks.conftest import call_node, node_message

    site_admin(site, referral_spec, dp=SITE_DP | {"noise_seed": 3})
    config, _ = job_config(referral_spec, site, run_id="deployed", plaintext=False)
    reply = _deployment_call(site, node_message("query.stats", config))
    assert "refusal" in reply.content, reply.content
    assert "noise_seed" in str(reply.content["refusal"]["reason"])
    # The same job in a simulation (partition ids) is admitted: the refusal is the deployment engine's.
    config, _ = job_config(referral_spec, site, run_id="simulated")
    assert "refusal" not in call_node(build_client_app([site], allow_plaintext=True),
                                      node_message("query.stats", config)).content


def test_an_unset_seed_is_not_written_so_older_node_agents_still_read_the_policy(site):
    site_admin(site, dp=SITE_DP)
    written = json.loads((site / "policy.json").read_text(encoding="utf-8"))
    assert written["dp"]["enabled"] and "noise_seed" not in written["dp"]
    site_admin(site, dp=SITE_DP | {"noise_seed": 5})
    assert json.loads((site / "policy.json").read_text(encoding="utf-8"))["dp"]["noise_seed"] == 5


def test_the_seed_follows_the_sites_own_run_count_not_the_coordinators_run_id(site, referral_spec, tmp_path):
    """A coordinator names every run afresh; a seeded demo still repeats, because the site mixes in
    its own count of the training runs it accepted, never the run id the server sends."""
    import shutil

    twin = tmp_path / "twin" / site.name  # the same clinic, as a second demo makes it again
    shutil.copytree(site, twin)
    seeds = {}
    for folder, run_ids in ((site, ("demo-a-1", "demo-a-2")), (twin, ("other-name", "yet-another"))):
        site_admin(folder, referral_spec, dp=SITE_DP | {"noise_seed": 11})
        seeds[folder] = [_config(folder, referral_spec, run_id=run_id)[0].dp_noise_seed for run_id in run_ids]
    assert seeds[site] == seeds[twin]  # run by run, the same noise at the same site
    assert len(set(seeds[site])) == 2  # and the site's second run is not its first


def test_a_runners_own_approval_keeps_the_demos_seed(site, referral_spec):
    """The demo seeds its clinics' noise when their admins approve the plans; the simulation runner
    then approves the same plan again without a seed, and the clinics' noise must stay seeded (it
    did not: every demo run drew fresh noise while the demo said 'seeded')."""
    from node_agent.policy import load_site_policy
    from simulation.engine import approve_at_sites

    approve_at_sites([site], referral_spec, rounds=3, dp=(1.5, 1e-4), noise_seed=4)
    approve_at_sites([site], referral_spec, rounds=3, dp=(1.5, 1e-4))  # run_simulated_federation's own
    assert load_site_policy(site).dp.noise_seed == 4
    assert _config(site, referral_spec, run_id="after")[0].dp_noise_seed is not None


def test_the_demo_unseeds_its_clinics_once_its_runs_are_done(site, referral_spec):
    """A job run later on the demo's clinics (from the console) must not reuse the demo's known seed."""
    from node_agent.policy import load_site_policy
    from simulation.engine import approve_at_sites, unseed_sites

    approve_at_sites([site], referral_spec, rounds=3, dp=(1.5, 1e-4), noise_seed=0)
    unseed_sites([site])
    policy = load_site_policy(site)
    assert policy.dp.enabled and policy.dp.noise_seed is None
    assert _config(site, referral_spec, run_id="console-job")[0].dp_noise_seed is None
