"""The site's own line: which training plans it runs, its differential-privacy noise and budget,
and the smallest n any number that leaves it may describe.

The policy is a file in the site folder (``policy.json``), edited only by the site's admin
(``fenji node approve / revoke / policy``). The coordinator's messages cannot change it:

- **Approved plans.** A plan is a task spec (features, label, model family and its settings),
  identified by the SHA-256 of its canonical JSON, with bounds on rounds, local epochs and learning
  rate. A job for any other spec, or outside the bounds, is refused before any record is read.
- **DP at the site.** When ``dp.enabled``, the site trains with DP-SGD at *its* ``epsilon_per_run``
  and ``delta`` whatever the round's config says, and a run that would take the site past its budget
  for the period (``budget_epsilon`` per ``period_days``) is refused. Each DP run is recorded in the
  node's budget ledger (``node_agent.budget``).
- **Minimum n.** A site with fewer than ``min_n`` training rows declines; metrics over fewer than
  ``min_n`` held-out rows are withheld and counts are rounded (``node_agent.egress``).
- **Statistics queries.** ``analytics.allowed`` lists the query kinds the site answers about an
  approved task (none by default), ``analytics.dp_epsilon`` the noise it adds to each answer
  (``node_agent.analytics``).
- **Syndromic surveillance.** ``surveillance.allowed`` (off by default) lets the site count syndromes
  per day about an approved task, into its ``district``'s encrypted sum, or, with ``clinic_series``,
  as its own series at its own ``clinic_min_cell`` (``node_agent.surveillance``).
- **Approved apps.** On Flower's deployment engine, the app bundle (FAB) that runs at the node is
  identified by the SHA-256 of its bytes (Flower's ``fab_hash``); the node's launcher
  (``node_agent.launcher``) runs only FABs on ``approved_apps`` (``fenji node approve-app``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import threading
import zipfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from federation.surveillance import DISTRICT_PATTERN
from models.spec import TaskSpec
from node_agent.errors import PolicyRefusal, SiteDataError

__all__ = ["POLICY_FILE", "AnalyticsPolicy", "ApprovedApp", "ApprovedPlan", "DPPolicy", "PlanBounds", "SitePolicy",
           "SurveillancePolicy",
           "describe_fab", "fab_digest", "load_site_policy", "normal_digest", "plan_digest", "policy_lock", "save_site_policy"]

POLICY_FILE = "policy.json"
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def plan_digest(spec: TaskSpec) -> str:
    """The plan's identity: SHA-256 of the task spec's canonical JSON (any change is another plan)."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def fab_digest(content: bytes) -> str:
    """A Flower app bundle's identity, as Flower computes its ``fab_hash``: SHA-256 of its bytes."""
    return hashlib.sha256(content).hexdigest()


def normal_digest(digest: str) -> str:
    """``digest`` as 64 lower-case hex digits, or a ``SiteDataError`` (a prefix approves nothing)."""
    value = digest.strip().lower()
    if not _HEX_DIGEST.fullmatch(value):
        raise SiteDataError(f"{digest!r} is not a SHA-256 digest (64 hex digits)")
    return value


def describe_fab(content: bytes) -> tuple[str, str]:
    """The app's ``(publisher/name, version)`` from the ``pyproject.toml`` inside a FAB.

    Raises
    ------
    SiteDataError
        If ``content`` is not a FAB (a zip file with a ``pyproject.toml``).
    """
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            config = tomllib.loads(fab.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SiteDataError(f"not a Flower app bundle (a zip file with a pyproject.toml): {exc}") from exc
    project = config.get("project", {})
    publisher = config.get("tool", {}).get("flwr", {}).get("app", {}).get("publisher", "")
    return f"{publisher}/{project.get('name', '')}", str(project.get("version", ""))


class PlanBounds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_rounds: int = Field(50, ge=1)
    max_local_epochs: int = Field(20, ge=1)
    max_learning_rate: float = Field(0.5, gt=0)


class ApprovedPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    family: str
    bounds: PlanBounds = Field(default_factory=PlanBounds)
    approved_by: str
    approved_at: str


class ApprovedApp(BaseModel):
    """An app bundle the site's admin allowed to run at this node (keyed by its digest)."""

    model_config = ConfigDict(extra="forbid")

    app: str = ""  # publisher/name, as the bundle said when it was approved (the digest is what counts)
    version: str = ""
    approved_by: str
    approved_at: str


class DPPolicy(BaseModel):
    """Record-level DP-SGD at this site; the site's numbers, never the server's."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    epsilon_per_run: float = Field(1.0, gt=0)
    delta: float = Field(1e-3, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    budget_epsilon: float = Field(10.0, gt=0, description="Total epsilon this site's records may spend per period.")
    period_days: int = Field(365, ge=1)
    noise_seed: int | None = Field(None, description=(
        "For simulated demos, benchmarks and tests only: seeds the DP noise (mixed with the site's own count of the "
        "training runs it accepted, the round and the site), so that a simulated demo repeats. Whoever knows it can predict the noise and "
        "subtract it: `fenji node up` refuses to start a clinic whose policy has one, and a node on the deployment "
        "engine refuses every job while it has one. None (the default): the noise is seeded from the OS."))


class AnalyticsPolicy(BaseModel):
    """Which federated-statistics queries this site answers (``node_agent.analytics``); none by default.

    ``dp_epsilon`` > 0 noises every answer with that epsilon, charged to the site's budget ledger
    (``dp.budget_epsilon`` per ``dp.period_days``); 0 sends exact cells, small ones suppressed.
    """

    model_config = ConfigDict(extra="forbid")

    allowed: list[Literal["count", "mean", "histogram", "crosstab"]] = Field(default_factory=list)
    dp_epsilon: float = Field(0.0, ge=0)


class SurveillancePolicy(BaseModel):
    """Whether and how this site answers syndromic-surveillance queries (``node_agent.surveillance``); off by default.

    ``district`` is the health district the site reports to (needed to answer). By default its daily
    counts go only into the district's encrypted sum, which the key holder decrypts over at least
    min-sites clinics; ``sum_min_cell`` > 1 sends its cells below that as zeros there too.
    ``clinic_series`` ``"week"`` or ``"day"`` publishes the site's own series instead (and takes it out
    of the district's sum), each count either 0 or at least ``clinic_min_cell``
    (docs/threat-model.md, "Syndromic surveillance").
    """

    model_config = ConfigDict(extra="forbid")

    allowed: bool = False
    district: str | None = Field(None, pattern=DISTRICT_PATTERN)
    clinic_series: Literal["none", "week", "day"] = "none"
    clinic_min_cell: int = Field(10, ge=1)
    sum_min_cell: int = Field(1, ge=1)


class SitePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    approved_plans: dict[str, ApprovedPlan] = Field(default_factory=dict)
    approved_apps: dict[str, ApprovedApp] = Field(default_factory=dict)
    dp: DPPolicy = Field(default_factory=DPPolicy)
    min_n: int = Field(10, ge=1, description="No number about fewer rows than this leaves the site.")
    release_train_loss: bool = False
    # Held-out metrics on count-sized grids (node_agent.egress): then no metric pins a count more
    # finely than the count rule; AUROC and kappa about small classes are withheld. Off by default
    # for now: at small clinics it withholds most AUROC and kappa figures (docs/threat-model.md).
    coarse_metrics: bool = False
    allow_plaintext: bool = False
    analytics: AnalyticsPolicy = Field(default_factory=AnalyticsPolicy)
    surveillance: SurveillancePolicy = Field(default_factory=SurveillancePolicy)

    def approve(self, spec: TaskSpec, *, by: str, bounds: PlanBounds | None = None) -> str:
        digest = plan_digest(spec)
        self.approved_plans[digest] = ApprovedPlan(
            task=spec.name, family=spec.model.family, bounds=bounds or PlanBounds(), approved_by=by,
            approved_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        return digest

    def approve_app(self, digest: str, *, by: str, app: str = "", version: str = "") -> str:
        """Put the app bundle with SHA-256 ``digest`` on the approved list; return the digest."""
        digest = normal_digest(digest)
        self.approved_apps[digest] = ApprovedApp(app=app, version=version, approved_by=by,
                                                 approved_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        return digest

    def check_app(self, digest: str) -> ApprovedApp:
        """The approval of the app bundle with SHA-256 ``digest``, or a ``PolicyRefusal``."""
        approved = self.approved_apps.get(digest.lower())
        if approved is None:
            raise PolicyRefusal(f"app not approved: the app bundle {digest[:12]} is not on this site's approved "
                                "app list (`fenji node approve-app`)")
        return approved

    def check_job(self, spec: TaskSpec, config: dict) -> str:
        """The approved plan's digest for this job, or a ``PolicyRefusal`` saying why not.

        ``config`` is the round's config: its ``num-rounds``, ``epochs`` and ``learning-rate`` (when
        present) must be within the plan's bounds.
        """
        digest = plan_digest(spec)
        plan = self.approved_plans.get(digest)
        if plan is None:
            raise PolicyRefusal(f"plan not approved: task {spec.name!r} (plan {digest[:12]}) is not on this site's "
                                "approved list (`fenji node approve`)")
        bounds = plan.bounds
        rounds = int(config.get("num-rounds", 0) or 0)
        local_only = int(config.get("local-only-epochs", 0) or 0)
        if local_only > bounds.max_local_epochs * max(rounds, 1):
            raise PolicyRefusal(f"plan outside its bounds: {local_only} local-only epochs, at most "
                                f"{bounds.max_local_epochs * max(rounds, 1)}")
        if rounds > bounds.max_rounds:
            raise PolicyRefusal(f"plan outside its bounds: {rounds} rounds, at most {bounds.max_rounds} approved")
        epochs = config.get("epochs", spec.model.local_epochs)
        if int(epochs) < 1:
            raise PolicyRefusal(f"plan outside its bounds: {epochs} local epochs (a site trains at least one)")
        if int(epochs) > bounds.max_local_epochs:
            raise PolicyRefusal(f"plan outside its bounds: {epochs} local epochs, at most "
                                f"{bounds.max_local_epochs} approved")
        rate = config.get("learning-rate")
        if rate is not None and not float(rate) > 0:
            raise PolicyRefusal(f"plan outside its bounds: learning rate {rate} (a site's update would be the "
                                "coordinator's own model)")
        if rate is not None and float(rate) > bounds.max_learning_rate:
            raise PolicyRefusal(f"plan outside its bounds: learning rate {rate}, at most "
                                f"{bounds.max_learning_rate} approved")
        return digest


def load_site_policy(site_dir: Path) -> SitePolicy:
    """The site's policy; a site without a policy file has the default one (no plan approved).

    Raises
    ------
    SiteDataError
        If the file exists but is not a valid policy (a broken policy never means "anything goes").
    """
    path = Path(site_dir) / POLICY_FILE
    if not path.is_file():
        return SitePolicy()
    try:
        return SitePolicy.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError, OSError) as exc:
        raise SiteDataError(f"the site policy {path} is not valid: {str(exc).splitlines()[0]}") from exc


@contextlib.contextmanager
def policy_lock(site_dir: Path) -> Iterator[None]:
    """Hold the site's policy lock: an edit loads, changes and saves the policy inside it, so that two
    admins' edits at once never lose one (each sees the other's saved file)."""
    path = Path(site_dir) / f".{POLICY_FILE}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def save_site_policy(site_dir: Path, policy: SitePolicy) -> Path:
    """Write the policy atomically (a reader sees the old file or the new one, never half of one)."""
    path = Path(site_dir) / POLICY_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    # An unset demo noise seed is left out, so that a node agent from before it can still read the file.
    unset = {"dp": {"noise_seed"}} if policy.dp.noise_seed is None else None
    tmp.write_text(policy.model_dump_json(indent=2, exclude=unset) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
