"""The coordinator's training jobs and queries on Flower's simulation engine, over local site folders: the
``JobRunner`` the embedded demo's ``fenji coordinator serve`` injects (``coordinator.service.jobs``).
With ``FENJI_SUPERLINK`` set, jobs run on the deployment engine instead (``fenji.deployment_jobs``).

The coordinator may not import the simulation (import-linter's layers), so this shell composes them:
the root command puts ``runner_from_settings`` in the click context, and ``serve`` calls it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordinator.audit import AuditLog
from coordinator.service.errors import JobCancelled, JobFailed
from coordinator.service.jobs import JobRequest, JobResult, JobRunner, RoundCallback
from coordinator.service.queries import QueryRequest, result_of
from coordinator.service.sites import sightings_of
from coordinator.settings import CoordinatorSettings
from federation.analytics import canonical
from federation.errors import SettingsError
from fenji import surveillance_jobs
from models.errors import FenjiError

if TYPE_CHECKING:
    from flwr.clientapp.typing import Mod

__all__ = ["SimulationRunner", "left_out_sites", "runner_from_settings"]

# NotEnoughSitesError carries the sites a phase left out only in its message ("… Left out: site_b:
# refused …; node 7: no reply before the timeout"; coordinator.strategy.ReplyScreen.usable).
_LEFT_OUT = re.compile(r"^(?P<phase>[\w-]+) \(round \d+\):.*?Left out: (?P<rest>.*)$", re.DOTALL)


def left_out_sites(message: str, sites: Sequence[str]) -> list[dict[str, Any]]:
    """The ``{"site", "reason", "phase"}`` of each reply a failed phase left out, read from its message;
    a label is one of ``sites`` or ``node <n>`` (so a reason's own "; word: " is not taken for a site)."""
    match = _LEFT_OUT.match(message.strip())
    if match is None or match["rest"].strip() == "none":
        return []
    rest, phase = match["rest"].strip(), match["phase"]
    labels = "|".join([r"node \d+", *(re.escape(s) for s in sorted(sites, key=len, reverse=True))])
    starts = list(re.finditer(rf"(?:^|; )(?P<site>{labels}): ", rest))
    sites = []
    for this, following in zip(starts, starts[1:] + [None]):
        reason = rest[this.end():following.start() if following else len(rest)]
        sites.append({"site": this["site"], "reason": reason.strip(), "phase": phase})
    return sites


class SimulationRunner:
    """Runs a job over every site folder under ``sites_dir`` (``simulation.engine.site_dirs_of``) with
    the key holder at ``keyholder_home``, and registers the model in ``tracking_uri`` (if given).

    ``approve`` puts the job's plan on each site's approved list, as ``fenji sim`` does for a demo;
    without it each site's own policy decides, and a site that has not approved the plan refuses.
    ``client_mods`` are Flower mods around every site's ClientApp (a test stages a failing site).
    ``audit_log`` is the coordinator's audit log file, where each query is recorded as on the deployment
    engine (``fenji.deployment``).
    """

    def __init__(self, sites_dir: Path, *, keyholder_home: Path, tracking_uri: str | None = None,
                 approve: bool = True, encrypt: bool = True, client_mods: Sequence[Mod] = (),
                 audit_log: Path | None = None) -> None:
        self.sites_dir = Path(sites_dir)
        self.keyholder_home = Path(keyholder_home)
        self.tracking_uri = tracking_uri
        self.approve = approve
        self.encrypt = encrypt
        self.client_mods = list(client_mods)
        self.audit_log = None if audit_log is None else Path(audit_log)

    def __str__(self) -> str:
        return f"Flower's simulation engine over the site folders in {self.sites_dir}"

    def __call__(self, request: JobRequest, on_round: RoundCallback) -> JobResult:
        from models.spec import load_task
        from simulation.engine import run_simulated_federation, site_dirs_of

        try:
            spec = load_task(request.task)
            site_dirs = site_dirs_of(self.sites_dir)
            outcome = run_simulated_federation(
                spec, site_dirs, rounds=request.rounds, encrypt=self.encrypt, keyholder_home=self.keyholder_home,
                dp_epsilon=request.dp_epsilon, on_round=on_round, client_mods=self.client_mods, approve=self.approve,
                personalisation=request.personalisation)
        except JobCancelled:
            raise
        except FenjiError as exc:
            raise self._failed(exc) from exc
        result = JobResult(
            sites=outcome.sites, excluded=[e.to_dict() for e in outcome.excluded],
            details={"seconds": round(outcome.seconds, 2), "encrypted": outcome.encrypted,
                     "calibration": outcome.calibration.kind, "train_rows": outcome.train_rows,
                     "engine": "simulation"})
        if request.personalisation:
            result.details["personalisation"] = outcome.personalisation
        # What the run learnt of each site (last reply, report, audit head); every folder is an enrolled site.
        result.sightings = sightings_of(outcome, enrolled=[d.name for d in site_dirs])
        if self.tracking_uri:
            from coordinator.registry import register_outcome

            registered = register_outcome(outcome, tracking_uri=self.tracking_uri,
                                          extra_params={"engine": "simulation", "job-id": request.id})
            result.model, result.version = registered.name, str(registered.version)
        return result

    def _failed(self, exc: FenjiError) -> JobFailed:
        """``exc`` as the service records a failure, with the sites it left out (read from its message)."""
        names = [p.name for p in self.sites_dir.iterdir() if p.is_dir()] if self.sites_dir.is_dir() else []
        return JobFailed(str(exc), sites=left_out_sites(str(exc), names), error=type(exc).__name__)

    def run_query(self, request: QueryRequest) -> dict[str, Any]:
        """Answer a statistics or surveillance query over the same site folders; a failure is audited in
        ``audit_log`` (``coordinator.analytics.audit_failure``), as on the deployment engine.

        Raises
        ------
        JobFailed
            If a Fenji error failed it (too few sites: each left out named in ``sites``).
        """
        try:
            return self._answer(request)
        except Exception as exc:  # noqa: BLE001 - every failure is audited, then raised on
            failed = self._failed(exc) if isinstance(exc, FenjiError) else None
            if self.audit_log is not None:
                from coordinator.analytics import audit_failure

                audit_failure(AuditLog(self.audit_log), canonical(request.query), exc, task=request.task,
                              excluded=failed.sites if failed is not None else [], engine="simulation")
            if failed is None:
                raise
            raise failed from exc

    def _answer(self, request: QueryRequest) -> dict[str, Any]:
        """The answer over the site folders (``simulation.analytics``, or ``fenji.surveillance_jobs``); with
        ``approve`` the query's kind is first allowed at each site, as ``fenji sim`` does for a demo."""
        from models.spec import load_task
        from simulation.analytics import run_simulated_query
        from simulation.engine import site_dirs_of

        if surveillance_jobs.is_surveillance(request.query):  # syndromic surveillance (fenji.surveillance_jobs)
            return surveillance_jobs.answer(request.query, site_dirs_of(self.sites_dir), task=request.task,
                                            keyholder_home=self.keyholder_home, encrypt=self.encrypt,
                                            approve=self.approve, audit_log=self.audit_log)
        result = run_simulated_query(request.query, site_dirs_of(self.sites_dir), task=load_task(request.task),
                                     keyholder_home=self.keyholder_home, encrypt=self.encrypt, allow=self.approve,
                                     audit_log=self.audit_log)
        return result_of(result)


def runner_from_settings(settings: CoordinatorSettings) -> JobRunner | None:
    """With ``FENJI_SUPERLINK`` (a SuperLink connection of ``$FLWR_HOME/config.toml``), the deployment
    engine's runner of the app ``FENJI_FLWR_APP`` (default: this source checkout); else the runner of
    ``FENJI_SITES_DIR``'s site folders, registering in the coordinator's registry and using the key
    holder folder ``fenji sim`` uses; ``None`` when neither is set.

    Raises
    ------
    SettingsError
        If ``FENJI_SUPERLINK`` is set but there is no Flower app to submit.
    """
    from fenji.settings import load_shell_settings
    from keyholder.settings import load_keyholder_settings

    shell = load_shell_settings()
    if shell.superlink:
        from fenji.deployment_jobs import DeploymentRunner

        app = shell.flwr_app or Path(__file__).resolve().parents[1]
        if not (app / "pyproject.toml").is_file():
            raise SettingsError(f"FENJI_SUPERLINK is set but {app} is not a Flower app folder: set FENJI_FLWR_APP to "
                                "the Fenji release checkout whose bundle the clinics approved")
        return DeploymentRunner(app, shell.superlink)
    sites_dir = shell.sites_dir
    if sites_dir is None:
        return None
    keyholder = load_keyholder_settings(home=settings.home)
    return SimulationRunner(sites_dir, keyholder_home=keyholder.state_dir, tracking_uri=settings.tracking_uri,
                            audit_log=settings.audit_path)
