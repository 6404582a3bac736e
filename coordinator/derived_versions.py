"""Versions derived from a registered one: the same weights under an edited tier policy (issue 14).

A tier-policy edit registers a new version of the task's model: the base version's parameters,
encoding and calibration with the edited ``tier_policy.yaml``, hence a new bundle digest, tagged
``derived-from`` and ``change`` with the editor and reason. It reaches the clinics through the same
four-eyes promotion as any version (``coordinator.service.governance``).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from coordinator.errors import RegistryError
from coordinator.model_card import CARD_FILES, policy_text, render_model_card
from coordinator.registry import _missing_version, model_name
from models.bundle import bundle_digest, read_bundle, write_bundle
from models.errors import BundleError, PolicyError, first_line
from models.policy import TierPolicy

__all__ = ["POLICY_CHANGE", "DerivedVersion", "derive_tier_policy_version", "discard_version", "version_tier_policy"]

POLICY_CHANGE = "tier-policy"
_REWRITTEN = {"bundle", "tier_policy.yaml", "model_card.json", *CARD_FILES.values()}  # the rest is copied as is
_CHANGE_TAGS = {"bundle-sha256", "derived-from", "change", "change-by", "change-reason"}


@dataclass
class DerivedVersion:
    """A version registered by ``derive_tier_policy_version``."""

    name: str
    version: str
    run_id: str
    base_version: str
    bundle_sha256: str
    previous: TierPolicy
    policy: TierPolicy


def _client(tracking_uri: str) -> object:
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _download_bundle(client: object, task: str, version: str, tracking_uri: str, folder: Path) -> object:
    """The model version, with its bundle downloaded to ``folder/bundle`` and checked against its tag.

    Raises ``BundleError`` if the version has no bundle, ``RegistryError`` if it cannot be read or its
    bundle is not the one registered (nothing is derived from a bundle the nodes would refuse).
    """
    import mlflow

    name = model_name(task)
    try:
        mv = client.get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException as exc:
        raise RegistryError(_missing_version(client, name, str(version), tracking_uri, exc)) from exc
    try:
        if not mv.run_id or not client.list_artifacts(mv.run_id, "bundle"):
            raise BundleError(f"{name} version {version} has no serving bundle (hence no tier policy)")
        mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="bundle", tracking_uri=tracking_uri,
                                            dst_path=str(folder))
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise RegistryError(f"cannot download the bundle of {name} version {version}: {first_line(exc)}") from exc
    if bundle_digest(folder / "bundle") != mv.tags.get("bundle-sha256"):
        raise RegistryError(f"{name} version {version}: its bundle does not match its registered digest")
    return mv


def version_tier_policy(task: str, version: str, *, tracking_uri: str) -> TierPolicy:
    """The tier policy inside ``task`` ``version``'s bundle (the one the nodes apply), its digest checked.

    Raises
    ------
    BundleError
        If the version has no bundle.
    RegistryError
        If the version does not exist, or its bundle cannot be read or does not match its digest.
    """
    with tempfile.TemporaryDirectory() as tmp:
        _download_bundle(_client(tracking_uri), task, version, tracking_uri, Path(tmp))
        return read_bundle(Path(tmp) / "bundle")[3]


def derive_tier_policy_version(task: str, base_version: str, policy: TierPolicy, *, tracking_uri: str,
                               editor: str, reason: str) -> DerivedVersion:
    """Register a new version of ``task``'s model: ``base_version``'s parameters, encoding and
    calibration with ``policy`` as its tier policy, hence a new bundle digest.

    Its run copies the base run's parameters, metrics (the same model: the sites' metrics still hold)
    and other artifacts, and carries the new bundle and the base's model card with the change noted.
    The version is tagged ``derived-from``, ``change=tier-policy``, ``change-by`` and ``change-reason``.
    It is not promoted: it needs the same approvals as any version. On a failure nothing stays
    registered.

    Raises
    ------
    PolicyError
        If ``policy`` is not a valid tier policy, or equals the base's.
    BundleError
        If the base version has no bundle.
    RegistryError
        If the base cannot be read or the registry refuses.
    """
    import mlflow

    try:
        policy = TierPolicy.model_validate(policy.model_dump() if isinstance(policy, TierPolicy) else policy)
    except ValueError as exc:  # pydantic's ValidationError: say what is wrong, not how many things
        detail = "; ".join(e["msg"] for e in exc.errors()) if hasattr(exc, "errors") else first_line(exc)
        raise PolicyError(f"invalid tier policy: {detail}") from exc
    client, name = _client(tracking_uri), model_name(task)
    with tempfile.TemporaryDirectory() as tmp:
        base_dir, new_dir = Path(tmp, "base"), Path(tmp, "new")
        base = _download_bundle(client, task, base_version, tracking_uri, base_dir)
        spec, encoding, calibration, previous, flat = read_bundle(base_dir / "bundle")
        if previous == policy:
            raise PolicyError(f"{name} version {base_version} has this tier policy already: nothing to change")
        digest = write_bundle(new_dir / "bundle", spec=spec, encoding=encoding, calibration=calibration,
                              policy=policy, flat=flat)
        (new_dir / "tier_policy.yaml").write_text(yaml.safe_dump(policy.model_dump(), sort_keys=False))
        change = {"derived-from": str(base_version), "change": POLICY_CHANGE, "change-by": editor,
                  "change-reason": reason}
        run_id = version = None
        try:
            base_run = client.get_run(base.run_id)
            run_id = client.create_run(base_run.info.experiment_id, tags=change,
                                       run_name=f"tier-policy-{task}-from-v{base_version}").info.run_id
            _copy_run(client, base_run, run_id, Path(tmp, "copied"))
            client.log_artifacts(run_id, str(new_dir / "bundle"), "bundle")
            client.log_artifact(run_id, str(new_dir / "tier_policy.yaml"))
            tags = {k: v for k, v in base.tags.items() if k not in _CHANGE_TAGS} | change | {"bundle-sha256": digest}
            # The base's source: the same weights, so loading the version through MLflow gives this model.
            version = str(client.create_model_version(name, source=base.source, run_id=run_id, tags=tags).version)
            markdowns, card = _derived_card(client, base_run, Path(tmp, "card"), name=name, version=version,
                                            base_version=str(base_version), previous=previous, policy=policy,
                                            editor=editor, reason=reason)
            for lang, markdown in markdowns.items():
                client.log_text(run_id, markdown, CARD_FILES[lang])
            if card is not None:
                client.log_dict(run_id, card, "model_card.json")
            client.update_model_version(name, version, description=markdowns["en"])
            client.set_terminated(run_id)
        except (mlflow.exceptions.MlflowException, OSError) as exc:
            _discard(client, name, version, run_id)
            raise RegistryError(f"MLflow refused the tier-policy version of {name}: {first_line(exc)}") from exc
    return DerivedVersion(name, version, run_id, str(base_version), digest, previous, policy)


def discard_version(task: str, version: str, *, tracking_uri: str) -> None:
    """Delete ``task`` ``version`` and its run: undo a registration whose audit entry failed."""
    import mlflow

    client, name = _client(tracking_uri), model_name(task)
    try:
        run_id = client.get_model_version(name, str(version)).run_id
    except mlflow.exceptions.MlflowException:
        run_id = None
    _discard(client, name, str(version), run_id)


def _discard(client: object, name: str, version: str | None, run_id: str | None) -> None:
    import mlflow

    for undo, args in ((client.delete_model_version, (name, version)), (client.delete_run, (run_id,))):
        if None in args:
            continue
        try:
            undo(*args)
        except mlflow.exceptions.MlflowException as exc:  # keep the first error; say what is left
            logging.getLogger("fenji.coordinator").warning("could not undo %s%s: %s", undo.__name__, args, exc)


def _copy_run(client: object, base_run: object, run_id: str, folder: Path) -> None:
    """Copy ``base_run``'s parameters, metric histories and top-level files (but the rewritten ones)."""
    from mlflow.entities import Metric, Param

    base_id = base_run.info.run_id
    params = [Param(k, v) for k, v in base_run.data.params.items()]
    for i in range(0, len(params), 100):  # MLflow's batch limits
        client.log_batch(run_id, params=params[i:i + 100])
    metrics = [Metric(m.key, m.value, m.timestamp, m.step)
               for key in base_run.data.metrics for m in client.get_metric_history(base_id, key)]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    for info in client.list_artifacts(base_id):
        if not info.is_dir and info.path not in _REWRITTEN:
            client.log_artifact(run_id, client.download_artifacts(base_id, info.path, str(folder)))


def _derived_card(client: object, base_run: object, folder: Path, *, name: str, version: str, base_version: str,
                  previous: TierPolicy, policy: TierPolicy, editor: str, reason: str) -> tuple[dict[str, str], dict | None]:
    """The base's model card as the derived version's: retitled, the tier policy replaced, the change
    noted. With the base's JSON card, ``({lang: markdown}, json)`` in every card language, rendered from
    the JSON; without one (a version registered by hand), its English markdown edited, and ``None``."""
    files = {info.path for info in client.list_artifacts(base_run.info.run_id)}

    def read(path: str) -> str:
        return Path(client.download_artifacts(base_run.info.run_id, path, str(folder))).read_text("utf-8")

    card = None
    if "model_card.json" in files:
        card = json.loads(read("model_card.json"))
        change = {"kind": POLICY_CHANGE, "derived_from": base_version, "by": editor, "reason": reason,
                  "previous_tier_policy": previous.model_dump()}
        # A card from before ``changes`` has only its last change: its "after" is the base's own policy.
        earlier = card.get("changes") or (
            [card["change"] | {"tier_policy": card.get("tier_policy", previous.model_dump())}] if card.get("change") else [])
        card.setdefault("model", {})["version"] = version
        card["tier_policy"] = policy.model_dump()
        card["change"] = change
        card["changes"] = [*earlier, change | {"tier_policy": policy.model_dump()}]  # each edit, oldest first
        card["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            return {lang: render_model_card(card, lang) for lang in CARD_FILES}, card
        except (KeyError, TypeError, ValueError):  # a JSON card of another shape: its markdown is edited instead
            logging.getLogger("fenji.coordinator").warning("the JSON card of %s version %s cannot be rendered",
                                                           name, base_version)
    markdown = read("model_card.md") if "model_card.md" in files else f"# Model card: {name} version {base_version}\n"
    markdown = re.sub(r"\A# Model card: .*", f"# Model card: {name} version {version}", markdown, count=1)
    section = f"## Tier policy (governance settings)\n{policy_text(policy)}\n"
    if "## Tier policy (governance settings)" in markdown:
        markdown = re.sub(r"## Tier policy \(governance settings\)\n.*?\n(?=\n|## |\Z)", lambda _: section,
                          markdown, count=1, flags=re.DOTALL)
    else:
        markdown = markdown.rstrip("\n") + "\n\n" + section
    note = (f"## Change from version {base_version}: tier policy\n"
            f"The tier-policy thresholds were edited by {editor} (reason: {reason}). The parameters, encoding and "
            f"calibration are version {base_version}'s, so its per-site metrics hold unchanged.\n\n"
            f"- before: {policy_text(previous)}\n- after: {policy_text(policy)}\n")
    return {"en": markdown.rstrip("\n") + "\n\n" + note}, card
