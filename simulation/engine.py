"""Run a federation on Flower's simulation engine: one SuperNode per site folder.

This is where the parties meet in one machine: the key holder as its own service (a separate process
serving its HTTP API on loopback, with its own folder, keys and ledger), the coordinator's ServerApp
(in a thread of this process, reaching the key holder only over that API with a token) and one
ClientApp per site, each enrolled with the key holder. Ray, the engine underneath, is kept on this
machine: it listens on loopback only and sends nothing out.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from federation.errors import SiteDataError
from federation.identity import ENROLMENT_FILE, load_enrolment
from federation.settings import configure_environment, environment
from keyholder.state import KeyHolderState
from models.encoding import Encoder, SiteStatistics, encode_labels
from models.nets import build_model
from models.spec import TaskSpec
from models.training import TrainConfig, evaluate, train

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.clientapp.typing import Mod

__all__ = ["approve_at_sites", "enrol_sites", "pooled_reference", "run_key_holder", "run_simulated_federation", "simulate",
           "simulate_query", "site_dirs_of", "unseed_sites"]

T = TypeVar("T")  # what a simulated query returns

# Ray's defaults reach beyond the machine: it finds its own address by routing a UDP socket towards
# 8.8.8.8, its servers listen on all interfaces, and its dashboard process (started even with
# include_dashboard=False, to serve usage statistics) asks the cloud-metadata address 169.254.169.254
# which cloud it runs on, even with usage statistics off (ray 2.55: UsageStatsHead.run).
_RAY_INIT_ARGS = {
    "num_cpus": 2, "include_dashboard": False, "configure_logging": False,
    # With the node address exactly "127.0.0.1", Ray binds its gRPC servers, its agents and the
    # metrics exporter to loopback instead of 0.0.0.0 (and its workers are told that address).
    "_node_ip_address": "127.0.0.1",
}
_DEAD_PROXY = "http://127.0.0.1:9"
# Read by Ray's processes when they start (they inherit this process's environment).
_RAY_ENV = {
    # Single-machine mode: Ray's address lookup returns loopback instead of asking the route to
    # 8.8.8.8 (ray.init even swaps a "127.0.0.1" node address for that lookup's answer otherwise).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # The cloud-metadata probe uses `requests`, which honours proxy settings: through a proxy on a
    # closed loopback port it fails at once, and nothing leaves the machine. Ray's own gRPC ignores
    # proxies (grpc.enable_http_proxy=0), and loopback is exempt anyway.
    "http_proxy": _DEAD_PROXY, "https_proxy": _DEAD_PROXY, "HTTP_PROXY": _DEAD_PROXY, "HTTPS_PROXY": _DEAD_PROXY,
    "no_proxy": "127.0.0.1,localhost,::1", "NO_PROXY": "127.0.0.1,localhost,::1",
}


@contextmanager
def _ray_environment() -> Iterator[None]:
    """``_RAY_ENV`` while the simulation (and so Ray) runs; the caller's own values come back after."""
    from ray._private import ray_constants

    # This process read the single-machine flag when it first imported Ray, maybe before this
    # function set it: set Ray's copy too (ray 2.55; tests/simulation/test_ray_loopback.py checks it).
    saved_cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with environment(_RAY_ENV):
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster_mode


def site_dirs_of(sites_dir: Path) -> list[Path]:
    """The site folders under ``sites_dir``, sorted by name; each must hold a ``site.duckdb``.

    Hidden entries (``.DS_Store``, ``.ipynb_checkpoints``) and plain files are ignored.

    Raises
    ------
    SiteDataError
        Naming the folders without a store: a site silently left out would change the federation.
    """
    from node_agent.store import DB_NAME

    folders = sorted(p for p in Path(sites_dir).iterdir() if p.is_dir() and not p.name.startswith("."))
    missing = [p.name for p in folders if not (p / DB_NAME).is_file()]
    if missing:
        raise SiteDataError(
            f"no site store ({DB_NAME}) in {', '.join(missing)} under {sites_dir}: ingest each site with "
            "`fenji node ingest`, or move the folder out"
        )
    return folders


def _behind_mods(app: ClientApp, mods: Sequence[Mod]) -> ClientApp:
    """``app`` with ``mods`` around each handler of the protocol (as a site's own mods would be)."""
    from flwr.clientapp import ClientApp

    outer = ClientApp(mods=list(mods))
    # The message types run_federation sends; the inner app dispatches each to its own handler.
    for register in (outer.train(), outer.evaluate(), outer.query("stats"), outer.query("calibrate")):
        register(app)
    return outer


def enrol_sites(state: KeyHolderState, site_dirs: Sequence[Path]) -> list[str]:
    """Enrol each site folder with the simulation's key holder, as its admin would out of band; a
    folder already enrolled with this key holder keeps its enrolment. Returns the site ids."""
    from node_agent.store import SiteStore

    site_ids = []
    enrolled = state.enrolments()
    for site_dir in site_dirs:
        with SiteStore(Path(site_dir), read_only=True) as store:
            site_id = store.site_id
        site_ids.append(site_id)
        path = Path(site_dir) / ENROLMENT_FILE
        if path.is_file() and site_id in enrolled:
            current = load_enrolment(path)
            if current.keyholder == state.keyholder_id and current.site_key == enrolled[site_id]["site_key"]:
                continue
        if site_id in enrolled:
            state.revoke_site(site_id)
        state.enrol(site_id, f"simulation:{site_id}").save(path)
    return site_ids


def approve_at_sites(site_dirs: Sequence[Path], spec: TaskSpec, *, rounds: int,
                     dp: tuple[float, float] | None = None, learning_rate: float | None = None,
                     local_epochs: int | None = None, noise_seed: int | None = None) -> str:
    """Put the plan on each site's approved list and set its DP policy, as each site's admin would
    (``fenji node approve``, ``fenji node policy``); returns the plan's digest. ``dp`` is (epsilon
    per run, delta) to switch DP on at every site; ``None`` leaves each site's DP policy as it is.
    ``noise_seed`` (with ``dp``; simulated demos and benchmarks only: ``DPPolicy.noise_seed``) seeds
    each site's DP noise, so that a simulated run repeats; ``None`` leaves a seed the site's policy
    has (a later approval, e.g. the runner's own, never unseeds a demo; ``unseed_sites`` does)."""
    from node_agent.budget import node_audit
    from node_agent.policy import (
        PlanBounds,
        load_site_policy,
        plan_digest,
        policy_lock,
        save_site_policy,
    )

    digest = plan_digest(spec)
    for site_dir in site_dirs:
        with policy_lock(site_dir):  # as an admin's edit: load, change and save as one
            policy = load_site_policy(site_dir)
            plan = policy.approved_plans.get(digest)
            default = PlanBounds()
            wanted = PlanBounds(max_rounds=max(rounds, default.max_rounds),
                                max_local_epochs=max(local_epochs or 0, default.max_local_epochs),
                                max_learning_rate=max(learning_rate or 0.0, default.max_learning_rate))
            changed = plan is None or (plan.bounds.max_rounds < rounds
                                       or plan.bounds.max_learning_rate < (learning_rate or 0.0)
                                       or plan.bounds.max_local_epochs < (local_epochs or 0))
            if changed:
                policy.approve(spec, by="simulation (acting as the site's admin)", bounds=wanted)
            # DP is set only when asked for: a site's own DP policy is never switched off by a simulation.
            seed = policy.dp.noise_seed if noise_seed is None else noise_seed
            if dp and not (policy.dp.enabled and (policy.dp.epsilon_per_run, policy.dp.delta) == dp
                           and policy.dp.noise_seed == seed):
                policy.dp.enabled = True
                policy.dp.epsilon_per_run, policy.dp.delta = dp
                policy.dp.noise_seed = seed
                changed = True
            if changed:
                save_site_policy(site_dir, policy)
                node_audit(site_dir).append(actor="simulation", action="policy-changed", plan=digest,
                                            task=spec.name, dp=policy.dp.model_dump() if policy.dp.enabled else None)
    return digest


def unseed_sites(site_dirs: Sequence[Path]) -> None:
    """Remove a demo's ``dp.noise_seed`` from each site's policy (audited), so that whatever runs on
    these sites later (a job from the coordinator's console) draws its DP noise from the OS."""
    from node_agent.budget import node_audit
    from node_agent.policy import load_site_policy, policy_lock, save_site_policy

    for site_dir in site_dirs:
        with policy_lock(site_dir):
            policy = load_site_policy(site_dir)
            if policy.dp.noise_seed is None:
                continue
            policy.dp.noise_seed = None
            save_site_policy(site_dir, policy)
            node_audit(site_dir).append(actor="simulation", action="policy-changed", dp=policy.dp.model_dump(),
                                        reason="the demo's seeded noise ends with its runs")


def run_key_holder(stack: ExitStack, site_dirs: Sequence[Path], keyholder_home: Path | None = None):
    """The key holder as its own process on loopback for one simulation, closed with ``stack``: its
    folder made if new (``keyholder_home``, default ``FENJI_KEYHOLDER_HOME``), the sites enrolled, and
    a token for this simulation only, revoked at the end. Returns the client the coordinator uses."""
    from coordinator.keyholder_client import KeyHolderClient
    from keyholder.process import start_key_holder_service
    from keyholder.settings import load_keyholder_settings

    settings = load_keyholder_settings()
    state = KeyHolderState(keyholder_home or settings.state_dir)
    state.init()
    enrol_sites(state, site_dirs)
    caller = f"simulation-{uuid.uuid4().hex[:12]}"
    token = state.issue_token(caller)
    stack.callback(state.revoke_token, caller)
    service = stack.enter_context(start_key_holder_service(state.home, min_sites=settings.min_sites))
    key_holder = KeyHolderClient(service.url, token)
    stack.callback(key_holder.close)
    return key_holder


def simulate(server_app, client_app, n_sites: int, *, verbose: bool = False) -> None:
    """Flower's simulation engine, one SuperNode per site, Ray on loopback."""
    from flwr.simulation import run_simulation

    with _ray_environment():
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n_sites,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": dict(_RAY_INIT_ARGS)},
                       verbose_logging=verbose)


def simulate_query(ask: Callable[..., T], site_dirs: Sequence[Path], *, keyholder_home: Path | None = None,
                   encrypt: bool = True, verbose: bool = False, egress_log: Path | None = None,
                   audit_log: Path | None = None, what: str = "the query") -> T:
    """What ``ask(grid, key_holder, min_sites=..., audit=...)`` returns, called in the ServerApp of one
    simulation over the site folders once every site's SuperNode has joined (or after 120 s).

    ``key_holder`` is the key holder's client (``run_key_holder``), ``None`` without ``encrypt``;
    ``min_sites`` is the key holder's setting; ``audit`` is the coordinator's audit log at ``audit_log``,
    or ``None``. ``what`` names the query in the error if Flower ends without calling ``ask``.

    Raises
    ------
    Exception
        Whatever ``ask`` raised (Flower would only log it).
    """
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from coordinator.audit import AuditLog
    from keyholder.settings import load_keyholder_settings
    from node_agent.client_app import build_client_app

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    settings = load_keyholder_settings()
    results: list = []
    errors: list[BaseException] = []
    with ExitStack() as stack:
        key_holder = run_key_holder(stack, site_dirs, keyholder_home) if encrypt else None
        server_app = ServerApp()

        @server_app.main()
        def main(grid: Grid, context: Context) -> None:
            import time

            deadline = time.monotonic() + 120.0
            while len(list(grid.get_node_ids())) < len(site_dirs) and time.monotonic() < deadline:
                time.sleep(0.2)
            try:
                results.append(ask(grid, key_holder, min_sites=settings.min_sites,
                                   audit=AuditLog(audit_log) if audit_log else None))
            except Exception as exc:  # noqa: BLE001 - handed back to the caller: Flower would only log it
                errors.append(exc)

        client_app = build_client_app([Path(p).resolve() for p in site_dirs], egress_log=egress_log,
                                      allow_plaintext=not encrypt)
        simulate(server_app, client_app, len(site_dirs), verbose=verbose)
    if errors:
        raise errors[0]
    if not results:
        raise RuntimeError(f"{what} ended without a result; run with verbose=True for Flower's log")
    return results[0]


def run_simulated_federation(
    spec: TaskSpec,
    site_dirs: Sequence[Path],
    *,
    rounds: int = 20,
    encrypt: bool = True,
    keyholder_home: Path | None = None,
    local_epochs: int | None = None,
    learning_rate: float | None = None,
    proximal_mu: float = 0.0,
    seed: int = 0,
    dp_epsilon: float | None = None,
    dp_delta: float = 1e-3,
    egress_log: Path | None = None,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    verbose: bool = False,
    client_mods: Sequence[Mod] = (),
    approve: bool = True,
    packed: bool = True,
    personalisation: bool = True,
):
    """Run statistics + ``rounds`` rounds of (encrypted) FedAvg over the site folders.

    The key holder's folder is ``keyholder_home`` (default: ``FENJI_KEYHOLDER_HOME``, else
    ``FENJI_HOME/keyholder``), made on first use; it keeps its keys and its ledger between runs, so
    its cohort rules hold across runs too. min-sites is the key holder's (``FENJI_MIN_SITES``) and
    nothing here can lower it. With ``approve`` (the default) the runner approves the plan at each
    site and, with ``dp_epsilon``, switches each site's DP on at that epsilon (``approve_at_sites``),
    as the sites' admins would; without it, the sites' own policies decide. ``client_mods`` are Flower mods put
    around every site's ClientApp
    (outermost first): the seam to stage a misbehaving site. The outcome's ``excluded`` lists the
    replies left out.
    With ``personalisation`` off the sites skip their personalisation step at the end.

    Raises
    ------
    NotEnoughSitesError, AggregateCheckError, PrivacyError
        If a phase has fewer than min-sites usable replies, an inconsistent aggregate, or the key
        holder refuses a decryption.
    """
    configure_environment()

    from coordinator.outcome import FederationOutcome, RunSettings
    from coordinator.server_app import build_server_app
    from keyholder.settings import load_keyholder_settings
    from node_agent.client_app import build_client_app

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    keyholder_settings = load_keyholder_settings()
    settings = RunSettings(
        task=spec, rounds=rounds, encrypt=encrypt, min_sites=keyholder_settings.min_sites, local_epochs=local_epochs,
        learning_rate=learning_rate, proximal_mu=proximal_mu, seed=seed, dp_epsilon=dp_epsilon, dp_delta=dp_delta,
        packed=packed, personalisation=personalisation,
    )
    if approve:
        approve_at_sites(site_dirs, spec, rounds=rounds, dp=(dp_epsilon, dp_delta) if dp_epsilon else None,
                         learning_rate=learning_rate, local_epochs=local_epochs)
    outcomes: list[FederationOutcome] = []
    with ExitStack() as stack:
        key_holder = run_key_holder(stack, site_dirs, keyholder_home) if encrypt else None
        server_app = build_server_app(settings, key_holder, n_sites=len(site_dirs), on_round=on_round,
                                      on_done=outcomes.append)
        client_app = build_client_app([Path(p).resolve() for p in site_dirs], egress_log=egress_log,
                                      allow_plaintext=not encrypt)
        if client_mods:
            client_app = _behind_mods(client_app, client_mods)
        simulate(server_app, client_app, len(site_dirs), verbose=verbose)
    if not outcomes:
        raise RuntimeError("the federated run ended without a result; run with --verbose for Flower's log")
    return outcomes[0]


def pooled_reference(
    spec: TaskSpec, site_dirs: Sequence[Path], *, epochs: int, config: TrainConfig | None = None
) -> dict[str, dict[str, float]]:
    """Centralised training on all sites' training rows, evaluated on each site's test split.

    A *reference* that only a simulation can compute: it reads every site's rows in one place.
    """
    from node_agent.local import load_site_data

    data = [load_site_data(Path(p), spec) for p in site_dirs]
    import pandas as pd

    pooled = pd.concat([d.train_frame for d in data], ignore_index=True)
    params = SiteStatistics.from_frame(spec, pooled).encoding_params()
    encoder = Encoder(spec, params)
    x, y = encoder.transform(pooled), encode_labels(spec, pooled)
    model = build_model(spec, x.shape[1])
    cfg = config or TrainConfig.from_spec(spec)
    cfg.epochs = epochs
    train(model, spec, x, y, cfg)
    return {
        d.site_id: evaluate(model, spec, encoder.transform(d.test_frame), encode_labels(spec, d.test_frame))
        for d in data
    }
