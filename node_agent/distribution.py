"""Model distribution at the clinic: fetch the version governance marked for production, verify it,
keep the last good one, and load it offline when the coordinator cannot be reached.

The advisor has three slots (``models.advisor.TASKS``: triage, diagnosis, referral risk). Each slot
serves a registered task with the slot's label: by default the task of the same name, or another the
site chose (``serve_task``, ``fenji node use-model``), e.g. ``referral_risk_text`` (the same label,
also reading the complaint text) in the ``referral_risk`` slot; ``<site>/models/served.json`` keeps
the choice. Versions are cached under ``<site>/models/<registered task>/<version>/``;
``<site>/models/current.json`` names the last good set (slot -> registered task, version and bundle
digest). A version whose bundle digest differs from the one registered (or from the one the node was
told about) is refused and the last good set stays. Every set fetched lands in the node's audit log
(``model-reload``, with the versions before and after).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from federation.settings import environment
from models.advisor import CARD_FILES, TASKS, Advisor, TaskModel, load_bundle_model
from models.bundle import bundle_digest
from models.errors import BundleError, TaskSpecError, first_line
from models.policy import TierPolicy
from node_agent.budget import node_audit
from node_agent.errors import RegistryError

__all__ = ["ModelDistribution", "advisor_from_registry", "load_task_model", "serve_task", "served_tasks", "slot_of"]

log = logging.getLogger(__name__)

# How long the node waits for the registry before it serves its last good set. MLflow's own default
# (7 retries with exponential back-off, 120 s per request) kept a clinic without models for minutes.
REGISTRY_TIMEOUT_SECONDS = 5
REGISTRY_RETRIES = 0


@contextmanager
def bounded_registry_calls(timeout: float = REGISTRY_TIMEOUT_SECONDS, retries: int = REGISTRY_RETRIES) -> Iterator[None]:
    """MLflow HTTP calls within this block give up after ``timeout`` seconds and ``retries`` retries."""
    with environment({"MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout)), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries)}):
        yield


class ModelDistribution:
    def __init__(self, site_dir: Path, tracking_uri: str | None, *, alias: str = "production") -> None:
        self.site_dir = Path(site_dir)
        self.cache = self.site_dir / "models"
        self.tracking_uri = tracking_uri
        self.alias = alias
        self.status = "nothing loaded yet"  # one line for the operator: where the served models came from

    @property
    def state_file(self) -> Path:
        return self.cache / "current.json"

    def current(self) -> dict[str, dict[str, str]]:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def fetch(self, expected_digests: Mapping[str, str] | None = None) -> Advisor:
        """The production versions of the tasks this site serves (``served_tasks``) from the registry,
        verified; they become the last good set. ``expected_digests`` is keyed by registered task."""
        if not self.tracking_uri:
            raise RegistryError("no model registry configured for this node")
        served = served_tasks(self.site_dir)
        with bounded_registry_calls():
            advisor = advisor_from_registry(self.tracking_uri, alias=self.alias, cache_dir=self.cache, tasks=served)
        state = {}
        for slot, ref in advisor.models.items():
            task = served[slot]
            digest = bundle_digest(self.cache / task / ref.version / "bundle")
            wanted = (expected_digests or {}).get(task)
            if wanted and wanted != digest:
                raise RegistryError(f"{ref.name} version {ref.version} has digest {digest[:12]}…, but this node was "
                                    f"told to expect {wanted[:12]}…; keeping the last good version")
            state[slot] = {"task": task, "version": ref.version, "digest": digest}
        previous = self.current()
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)
        self.status = f"fetched from {self.tracking_uri} ({self.alias}): {_versions(state)}"
        node_audit(self.site_dir).append(
            actor="node", action="model-reload", registry=self.tracking_uri, alias=self.alias,
            versions={t: e["version"] for t, e in state.items()}, digests={t: e["digest"] for t, e in state.items()},
            previous={t: e.get("version") for t, e in previous.items()},
            **({"tasks": {t: e["task"] for t, e in state.items()}} if any(t != e["task"] for t, e in state.items())
               else {}))
        return advisor

    def last_good(self) -> Advisor:
        """The last verified set, from the node's own disk (no network)."""
        state = self.current()
        if not state:
            raise RegistryError(f"no model has been fetched to {self.cache} yet")
        models, cards, policies = {}, {}, {}
        for slot, entry in state.items():
            task = entry.get("task", slot)  # a set fetched before slots were kept: each slot its own task
            folder = self.cache / task / entry["version"]
            if bundle_digest(folder / "bundle") != entry["digest"]:
                raise RegistryError(f"the cached {task} version {entry['version']} changed on disk; refusing it")
            models[slot], cards[slot], policies[slot] = load_bundle_model(folder, task, entry["version"])
        advisor = Advisor(models, policies["referral_risk"], cards=cards)
        fetched = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.state_file.stat().st_mtime))
        self.status = f"the last good set on this node (verified {fetched}): {_versions(state)}"
        return advisor

    def load(self, expected_digests: Mapping[str, str] | None = None) -> Advisor:
        """``fetch``, or the last good set if the registry is unreachable or refuses."""
        started = time.monotonic()
        try:
            return self.fetch(expected_digests)
        except Exception as exc:  # noqa: BLE001 - unreachable, refused or corrupt: all mean "keep the last good"
            reason = first_line(exc)[:200]
            log.warning("model fetch failed (%s); serving the last good version", reason)
            try:
                advisor = self.last_good()
            except (RegistryError, BundleError) as none:
                raise RegistryError(f"{none}, and the registry gave none ({reason})") from exc
            self.status = (f"registry {self.tracking_uri} not usable after {time.monotonic() - started:.0f} s "
                           f"({reason}); serving {self.status}")
            return advisor


def _versions(state: Mapping[str, Mapping[str, str]]) -> str:
    return ", ".join(f"{slot} v{entry['version']}" if entry.get("task", slot) == slot
                     else f"{slot}: {entry['task']} v{entry['version']}" for slot, entry in sorted(state.items()))


# -- which registered task each slot serves ---------------------------------------------------------

SERVED_FILE = "served.json"


def slot_of(task: str) -> str:
    """The advisor slot a built-in task can serve: the one whose task has the same label.

    Raises
    ------
    TaskSpecError
        If ``task`` is not a built-in task, or no slot has its label.
    """
    from models.spec import load_task

    spec = load_task(task)
    for slot in TASKS:
        label = load_task(slot).label
        if (label.name, label.kind, label.classes) == (spec.label.name, spec.label.kind, spec.label.classes):
            return slot
    raise TaskSpecError(f"task {task!r} predicts {spec.label.name!r}, which none of the slots {', '.join(TASKS)} "
                        "does: a clinic cannot serve it")


def served_tasks(site_dir: Path) -> dict[str, str]:
    """Slot -> the registered task this site serves in it (the slot's own task unless the site chose)."""
    path = Path(site_dir) / "models" / SERVED_FILE
    chosen: dict[str, str] = {}
    if path.is_file():
        try:
            chosen = {str(k): str(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
        except (ValueError, AttributeError) as exc:
            raise RegistryError(f"{path} is not a valid choice of served models: {exc}") from exc
    for slot, task in chosen.items():
        if slot not in TASKS or (task != slot and slot_of(task) != slot):
            raise RegistryError(f"{path}: {task!r} cannot serve the {slot!r} slot (`fenji node use-model` sets it)")
    return {slot: chosen.get(slot, slot) for slot in TASKS}


def serve_task(site_dir: Path, task: str) -> str:
    """Serve ``task`` in the slot with its label from the next fetch on; returns the slot.

    Raises
    ------
    TaskSpecError
        If ``task`` cannot be served in any slot (``slot_of``).
    """
    slot = slot_of(task)
    served = served_tasks(site_dir) | {slot: task}
    path = Path(site_dir) / "models" / SERVED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: v for k, v in served.items() if v != k}, indent=2), encoding="utf-8")
    tmp.replace(path)
    return slot


# -- the node's registry client: MLflow stays on this side of the boundary (``models`` has none) ----

def advisor_from_registry(tracking_uri: str, *, alias: str | None = None, versions: Mapping[str, str] | None = None,
                          policy: TierPolicy | None = None, cache_dir: Path | None = None,
                          tasks: Mapping[str, str] | None = None) -> Advisor:
    """Each slot's model version from MLflow: by ``versions[slot]``, else by ``alias`` (e.g.
    "production"), else the newest version; each bundle's digest is verified before it is loaded.
    ``tasks`` maps a slot to the registered task it serves (default: the slot's own)."""
    models, cards, policies = {}, {}, {}
    for slot in TASKS:
        models[slot], cards[slot], policies[slot] = load_task_model(
            tracking_uri, (tasks or {}).get(slot, slot), version=(versions or {}).get(slot), alias=alias,
            cache_dir=cache_dir)
    return Advisor(models, policy or policies["referral_risk"], cards=cards)


def load_task_model(tracking_uri: str, task: str, *, version: str | None = None, alias: str | None = None,
                    cache_dir: Path | None = None) -> tuple[TaskModel, str, TierPolicy]:
    """One task's registered model version from MLflow: ``(model, cards, tier policy)``, the cards
    language -> markdown (``models.advisor.load_bundle_model``).

    The version's bundle is downloaded (into ``cache_dir`` if given) and its digest checked against
    the version's ``bundle-sha256`` tag before anything is loaded from it.
    """
    import mlflow

    name = f"fenji-{task}"
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if version is not None:
            mv = client.get_model_version(name, str(version))
        elif alias is not None:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            mv = max(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
        import tempfile

        folder = Path(cache_dir) / task / str(mv.version) if cache_dir else Path(tempfile.mkdtemp(prefix="fenji-"))
        folder.mkdir(parents=True, exist_ok=True)
        expected = mv.tags.get("bundle-sha256")
        # A version already in the cache and intact is not downloaded again (a reload, a second slot choice).
        if not (cache_dir and (folder / "model_card.md").is_file() and _intact(folder / "bundle", expected)):
            present = {info.path for info in client.list_artifacts(mv.run_id)}
            cards = [name for name in CARD_FILES.values() if name in present or name == CARD_FILES["en"]]
            for artifact in ("bundle", *cards):  # only what serving needs (a version may have no Chinese card)
                mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=artifact,
                                                    tracking_uri=tracking_uri, dst_path=str(folder))
    except (mlflow.exceptions.MlflowException, ValueError, OSError) as exc:
        raise RegistryError(f"no usable version of {name} in {tracking_uri} ({alias or version or 'latest'}): {exc}") from exc
    actual = bundle_digest(folder / "bundle")
    if expected != actual:
        raise RegistryError(f"{name} version {mv.version}: bundle digest {actual[:12]}… does not match the "
                            f"registered {str(expected)[:12]}…; refusing to serve it")
    return load_bundle_model(folder, task, str(mv.version))


def _intact(bundle: Path, expected: str | None) -> bool:
    try:
        return bool(expected) and bundle.is_dir() and bundle_digest(bundle) == expected
    except (BundleError, OSError):
        return False
