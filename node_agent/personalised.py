"""The clinic's personalised models: computed, kept and served at the site only.

``personalise_site`` adapts the production global model of one task to this site's own training rows
(``node_agent.local.personalise``: the candidate with the lowest log loss on a held-back fifth) and
saves it under ``<site>/personalised/<task>/``: a bundle (``models.bundle``, the same files and digest
as a registered version) and ``personalisation.json`` naming the global version and bundle digest it
was derived from, the method, when, and the SHA-256 of the saved bundle. Nothing here is sent
anywhere; the coordinator's protocol has no message that could carry it (``node_agent.egress``).

``apply_personalisation`` is what the scoring service serves: each task's personalised model when
the site has it switched on, its bundle verifies, and it was derived from exactly the global version
(and digest) now in production; otherwise the global model, with a one-line reason per task.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ValidationError

from models.advisor import Advisor, TaskModel, load_bundle_model
from models.assessment import Assessment, ModelRef
from models.bundle import bundle_digest, read_bundle, write_bundle
from models.errors import BundleError
from models.nets import get_flat
from models.policy import TierPolicy
from models.training import TrainConfig
from node_agent.errors import RegistryError, SiteDataError
from node_agent.local import load_site_data, personalise

__all__ = [
    "PersonalisedAdvisor", "PersonalisedInfo", "apply_personalisation", "is_enabled", "load_personalised",
    "personalise_site", "personalised_info", "set_enabled",
]

PERSONAL_DIR = "personalised"
SETTINGS_FILE = "settings.json"
INFO_FILE = "personalisation.json"
# The section the clinic adds to the global version's card, in each card language (models.advisor.CARD_FILES)
_PERSONALISED_SECTION = {
    "en": "\n\n## Personalised at this clinic\n\nServed here: version {info.version}, `{info.method}` on {info.rows} "
          "of this clinic's rows ({info.created_at:%Y-%m-%d %H:%M} UTC), from global version {info.base_version}. "
          "It never leaves the clinic.\n",
    "zh-CN": "\n\n## 本院个性化\n\n本院使用：第 {info.version} 版，以 `{info.method}` 在本院 {info.rows} 行数据上拟合"
             "（{info.created_at:%Y-%m-%d %H:%M} UTC），源自全局模型第 {info.base_version} 版。它从不离开本院。\n",
}


class PersonalisedInfo(BaseModel):
    """What a saved personalised model is and where it came from (``personalisation.json``)."""

    task: str
    method: str
    base_version: str
    base_digest: str
    created_at: datetime
    bundle_sha256: str
    rows: int
    validation_log_loss: dict[str, float] = {}

    @property
    def version(self) -> str:
        """The served version: the global one it came from, plus which personalisation."""
        return f"{self.base_version}+site.{self.bundle_sha256[:8]}"

    def ref(self) -> ModelRef:
        return ModelRef(name=f"fenji-{self.task}", version=self.version, card_url=f"/api/v1/model/{self.task}/card",
                        personalised=True, method=self.method, base_version=self.base_version)


def _folder(site_dir: Path, task: str) -> Path:
    return Path(site_dir) / PERSONAL_DIR / task


def is_enabled(site_dir: Path) -> bool:
    """Whether the site serves its personalised models (on unless the site switched them off)."""
    path = Path(site_dir) / PERSONAL_DIR / SETTINGS_FILE
    try:
        return bool(json.loads(path.read_text())["enabled"]) if path.exists() else True
    except (ValueError, KeyError, TypeError) as exc:
        raise SiteDataError(f"{path} is not a valid personalisation setting: {exc}") from exc


def set_enabled(site_dir: Path, enabled: bool) -> None:
    path = Path(site_dir) / PERSONAL_DIR / SETTINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"enabled": enabled}))
    tmp.replace(path)


def personalised_info(site_dir: Path, task: str) -> PersonalisedInfo | None:
    """The saved personalisation's description, or None if the site has none for ``task``."""
    path = _folder(site_dir, task) / INFO_FILE
    if not path.exists():
        return None
    try:
        return PersonalisedInfo.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise BundleError(f"{path} is not a valid personalisation record") from exc


def load_personalised(site_dir: Path, task: str) -> tuple[PersonalisedInfo, TaskModel]:
    """The saved personalised model of ``task``, verified against its recorded SHA-256.

    Raises
    ------
    BundleError
        If there is none, or its bundle changed since it was saved.
    """
    info = personalised_info(site_dir, task)
    if info is None:
        raise BundleError(f"no personalised {task} model at {site_dir}")
    folder = _folder(site_dir, task) / "bundle"
    actual = bundle_digest(folder)
    if actual != info.bundle_sha256:
        raise BundleError(f"the personalised {task} model changed on disk (digest {actual[:12]}…, saved "
                          f"{info.bundle_sha256[:12]}…); refusing it")
    spec, encoding, calibration, _, flat = read_bundle(folder)
    return info, TaskModel(spec, encoding, flat, calibration, info.ref())


def _production(site_dir: Path, slot: str) -> tuple[str, str, str]:
    """(registered task, version, digest) of the global model this node last fetched and verified for
    ``slot`` (``node_agent.distribution``: a slot may serve another task with its label)."""
    state_file = Path(site_dir) / "models" / "current.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if slot not in state:
        raise RegistryError(f"no production {slot} model on this node yet: start `fenji node serve` once to fetch it")
    entry = state[slot]
    return str(entry.get("task", slot)), str(entry["version"]), str(entry["digest"])


def personalise_site(site_dir: Path, task: str, *, config: TrainConfig | None = None) -> PersonalisedInfo:
    """Adapt this node's production global model in slot ``task`` to the site's rows and save it.

    Only the site's own training rows are read; the result stays under ``<site>/personalised/``. The
    slot's model is the registered task the site serves in it (e.g. ``referral_risk_text`` in
    ``referral_risk``), whose rows are read; ``PersonalisedInfo.task`` names that task.

    Raises
    ------
    RegistryError
        If the node has no production model of ``task``, or its cached bundle does not verify.
    SiteDataError
        If the site has no training rows for the task.
    """
    site_dir = Path(site_dir)
    registered, version, digest = _production(site_dir, task)
    version_dir = site_dir / "models" / registered / version
    if bundle_digest(version_dir / "bundle") != digest:
        raise RegistryError(f"the cached {registered} version {version} changed on disk; fetch it again")
    base, _, policy = load_bundle_model(version_dir, registered, version)
    data = load_site_data(site_dir, base.spec)
    chosen = personalise(data, base.encoding, base.flat, base.calibration, config or TrainConfig.from_spec(base.spec))
    folder = _folder(site_dir, task)
    staging = folder.with_name(f".{task}.new")
    shutil.rmtree(staging, ignore_errors=True)
    sha = write_bundle(staging / "bundle", spec=base.spec, encoding=base.encoding, calibration=chosen.calibration,
                       policy=policy, flat=get_flat(chosen.model))
    info = PersonalisedInfo(task=registered, method=chosen.choice, base_version=version, base_digest=digest,
                            created_at=datetime.now(timezone.utc), bundle_sha256=sha, rows=len(data.train_frame),
                            validation_log_loss=chosen.validation_log_loss)
    (staging / INFO_FILE).write_text(info.model_dump_json(indent=2), encoding="utf-8")
    # Swapped in whole: a serving process never reads half of an old and half of a new model.
    shutil.rmtree(folder, ignore_errors=True)
    staging.replace(folder)
    return info


class PersonalisedAdvisor(Advisor):
    """An ``Advisor`` some of whose models are the site's own; each answer says which (``models``)."""

    def assess(self, records):  # type: ignore[override]
        answers: list[Assessment] = super().assess(records)
        if self.models["referral_risk"].personalised:
            for answer in answers:
                answer.referral_risk.personalised = True
        return answers


def apply_personalisation(site_dir: Path, advisor: object) -> tuple[object, dict[str, str]]:
    """``advisor`` with each task's personalised model swapped in where it may be served.

    Returns the advisor to serve and, per task, one line saying which model answers and why. Anything
    but a ``models.advisor.Advisor`` (a test's fake) is returned unchanged.
    """
    if not isinstance(advisor, Advisor):
        return advisor, {}
    if not is_enabled(site_dir):
        return advisor, {t: "global model: personalised models are off at this site "
                            "(`fenji node personalised on`)" for t in advisor.tasks}
    tasks, cards, notes = dict(advisor.tasks), dict(advisor.cards), {}
    for task in advisor.tasks:
        served = advisor.models[task]
        try:
            info = personalised_info(site_dir, task)
            if info is None:
                notes[task] = "global model: no personalised model at this site (`fenji node personalise`)"
                continue
            registered = advisor.tasks[task].spec.name  # the task this slot serves (node_agent.distribution)
            if info.task != registered:
                notes[task] = (f"global model: the personalised model was made from {info.task}, this clinic now "
                               f"serves {registered}; run `fenji node personalise` again")
                continue
            if info.method == "global":
                notes[task] = "global model: this clinic's own validation rows chose the global model"
                continue
            production = Path(site_dir) / "models" / registered / served.version / "bundle"
            digest = bundle_digest(production) if production.exists() else None
            if info.base_version != served.version or info.base_digest != digest:
                notes[task] = (f"global model: the personalised model was derived from version {info.base_version}, "
                               f"production is version {served.version}; run `fenji node personalise` again")
                continue
            info, tasks[task] = load_personalised(site_dir, task)
        except BundleError as exc:
            notes[task] = f"global model: {exc}"
            continue
        base_cards = advisor.cards.get(task)
        languages = list(base_cards) if isinstance(base_cards, dict) and base_cards else ["en"]
        cards[task] = {lang: advisor.model_card(task, lang) + _PERSONALISED_SECTION[lang].format(info=info)
                       for lang in languages if lang in _PERSONALISED_SECTION}
        notes[task] = (f"personalised ({info.method}) from global version {info.base_version}"
                       + (f" of {info.task}" if info.task != task else ""))
    if all(tasks[t] is advisor.tasks[t] for t in tasks):
        return advisor, notes
    policy: TierPolicy = advisor.policy
    return PersonalisedAdvisor(tasks, policy, top_k=advisor.top_k, explain_k=advisor.explain_k, cards=cards), notes
