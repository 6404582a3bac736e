"""The node decides what it runs: every message is admitted against the site's policy first.

``admit`` runs before any record is read: the plan must be approved and within its bounds, a run
keeps the number of rounds it started with (the site's DP noise is set for exactly that many), and a
DP run is charged to the site's budget before its first training step. A refused job gets a declared
reply (``refusal``: the site and the reason), which the coordinator shows as "declined"; both sides
audit it. A statistics query (phase ``analytics``) needs its task's plan approved and its kind on the
site's ``analytics.allowed`` list (``node_agent.analytics``); a surveillance query (phase
``surveillance``) needs it approved and the site's ``surveillance`` policy (``node_agent.surveillance``).
Neither has rounds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ConfigRecord

from models.spec import TaskSpec
from models.training import TrainConfig, dp_train_config
from node_agent.analytics import admitted_query
from node_agent.budget import node_audit
from node_agent.errors import PolicyRefusal
from node_agent.policy import SitePolicy, load_site_policy
from node_agent.surveillance import admitted_surveillance

__all__ = ["Admitted", "admit", "refusal_content", "site_train_config"]


@dataclass
class Admitted:
    """A message the site's policy allows, with what the handlers need to know about it."""

    site_dir: Path
    spec: TaskSpec
    config: ConfigRecord
    policy: SitePolicy
    digest: str
    rounds: int  # the rounds this run was accepted for
    ordinal: int = 0  # the site's own count of training runs it accepted before this one (0: the first)
    inputs: str = ""  # digest of what the site was sent for this message (federation.tags.inputs_digest)

    @property
    def dp_epsilon(self) -> float:
        """The epsilon this site applies to the run's training (0: no DP), declared in its replies."""
        return self.policy.dp.epsilon_per_run if self.policy.dp.enabled else 0.0


def _accepted_run(site_dir: Path, run_id: str) -> tuple[int | None, int]:
    """The rounds a training run was accepted for (None: not yet accepted) and its ordinal: how many
    training runs this site accepted before it (the site's own run identity, which no coordinator sets)."""
    accepted = [entry["details"] for entry in node_audit(site_dir).entries()
                if entry["action"] == "job-accepted" and "num_rounds" in entry["details"]]
    for ordinal, details in enumerate(accepted):
        if details.get("run_id") == run_id:
            return int(details["num_rounds"]), ordinal
    return None, len(accepted)


@contextlib.contextmanager
def _admission_lock(site_dir: Path) -> Iterator[None]:
    """One admission at a time per site: a run's rounds are looked up and, if new, recorded as one
    step, so two messages of one run sent at once cannot both be accepted with different rounds
    (each would set its noise for its own count while the budget is charged once per run)."""
    with (Path(site_dir) / ".admission.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def admit(site_dir: Path, config: ConfigRecord, phase: str, *, node_allows_plaintext: bool = False) -> Admitted:
    """Check one message of a job against the site's policy, before any record is read.

    ``node_allows_plaintext``: the node itself was started for an unencrypted comparison run
    (simulation ``--no-encryption``); otherwise only the policy's ``allow_plaintext`` allows one.

    Raises
    ------
    PolicyRefusal
        With the reason the coordinator will be shown.
    """
    policy = load_site_policy(site_dir)
    spec = TaskSpec.model_validate_json(str(config["task-json"]))
    if config.get("plaintext", False) and not (policy.allow_plaintext or node_allows_plaintext):
        raise PolicyRefusal("plaintext updates are not allowed by this site's policy")
    digest = policy.check_job(spec, dict(config))
    run_id = str(config.get("run-id", ""))
    if phase in ("analytics", "surveillance"):
        # A statistics or surveillance query about an approved task, as the site's policy allows
        # (node_agent.analytics, node_agent.surveillance).
        query = (admitted_query if phase == "analytics" else admitted_surveillance)(policy, spec, config)
        node_audit(site_dir).append(actor="node", action="job-accepted", run_id=run_id, task=spec.name, plan=digest,
                                    phase=phase, query=query.kind)
        return Admitted(site_dir, spec, config, policy, digest, 0)
    rounds = int(config.get("num-rounds", 0) or 0)
    if rounds < 1:
        raise PolicyRefusal("the job does not say how many rounds it runs (num-rounds): the site sets its noise "
                            "for the rounds it accepts")
    with _admission_lock(site_dir):
        accepted, ordinal = _accepted_run(site_dir, run_id)
        if accepted is None:
            node_audit(site_dir).append(actor="node", action="job-accepted", run_id=run_id, task=spec.name,
                                        plan=digest, phase=phase, num_rounds=rounds,
                                        dp_epsilon=policy.dp.epsilon_per_run if policy.dp.enabled else 0.0)
            accepted = rounds
    if rounds != accepted:
        raise PolicyRefusal(f"run {run_id} started with {accepted} rounds and now asks for {rounds}: the site's "
                            "noise was set for the rounds it accepted")
    if phase == "train" and not 1 <= int(config.get("server-round", 0)) <= accepted:
        raise PolicyRefusal(f"round {config.get('server-round')} of a run accepted for rounds 1 to {accepted}")
    return Admitted(site_dir, spec, config, policy, digest, accepted, ordinal)


def refusal_content(site_dir: Path, exc: PolicyRefusal, *, phase: str, config: ConfigRecord) -> dict:
    """The declared reply of a refused job (audited at the node)."""
    entry = node_audit(site_dir).append(actor="node", action="job-refused", run_id=str(config.get("run-id", "")),
                                        phase=phase, reason=str(exc))
    return {"refusal": ConfigRecord({"site-id": Path(site_dir).name, "reason": str(exc), "audit-head": entry["hash"]})}


def site_train_config(admitted: Admitted, n_rows: int | None = None) -> TrainConfig:
    """Training settings: the plan's, within its bounds; DP noise from the site's policy only."""
    spec, config = admitted.spec, admitted.config
    overrides = {k.replace("-", "_"): config[k] for k in ("epochs", "learning-rate", "proximal-mu", "seed") if k in config}
    train_config = TrainConfig.from_spec(spec, **overrides)
    dp = admitted.policy.dp
    if n_rows and dp.enabled:
        # The site sets its own noise so that the whole run spends its (epsilon, delta) on its records;
        # any dp-* value in the server's config is ignored. So is any seed of the server's for the
        # noise: only a demo site's own ``noise_seed`` seeds it, mixed with the run, round and site.
        train_config = dp_train_config(
            train_config, n=n_rows, epsilon=dp.epsilon_per_run, delta=dp.delta, max_grad_norm=dp.max_grad_norm,
            rounds=admitted.rounds, noise_seed=_noise_seed(admitted),
        )
        # DP-SGD's larger step (models.training.DP_SGD) stays within the rate the site approved.
        plan = admitted.policy.approved_plans.get(admitted.digest)
        if plan is not None:
            train_config.learning_rate = min(train_config.learning_rate, plan.bounds.max_learning_rate)
    return train_config


def _noise_seed(admitted: Admitted) -> int | None:
    """The demo site's DP noise seed for this round of this run at this site (None: from the OS).

    Mixed with the site's own run identity (the ordinal of the run among the training runs it
    accepted), the round and the site, so that no two rounds, runs or sites reuse noise, and a demo
    repeats although the coordinator names each run afresh: the server's config chooses only which
    round it is (within the rounds the site accepted), never the seed or the run's identity.
    """
    seed = admitted.policy.dp.noise_seed
    if seed is None:
        return None
    round_ = int(admitted.config.get("server-round", 0))
    identity = f"{seed}|run {admitted.ordinal}|{round_}|{Path(admitted.site_dir).name}"
    return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big") >> 1
