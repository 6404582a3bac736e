"""The referral advisor: the three clinical models together, answering for one patient (or many) at once.

Triage level (ordinal model, calibrated), referral risk (binary model, Platt-calibrated), top
diagnosis groups (multiclass model, calibrated), the recommended tier under the governance tier
policy, and the features that pushed the referral risk most. Inference is plain NumPy over the
models' weights (logistic family; an MLP falls back to PyTorch): scoring one patient takes
microseconds, so a clinic's service is bound by HTTP, not by the models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.assessment import (
    Assessment,
    Contribution,
    DiagnosisSuggestion,
    ModelRef,
    ReferralRisk,
    Triage,
)
from models.calibration import Calibration
from models.encoding import CLIP, Encoder, EncodingParams
from models.explain import occlusion_contributions, top_contributions
from models.nets import OrdinalModel, build_model, set_flat
from models.policy import TierPolicy, load_policy, recommend_tier
from models.spec import FeatureKind, TaskSpec
from models.training import predicted_level

__all__ = ["Advisor", "TaskModel", "encode_records", "load_bundle_model", "load_task_model"]

TASKS = ("triage", "diagnosis", "referral_risk")


def encode_records(encoder: Encoder, records: Sequence[Mapping[str, object]]) -> np.ndarray:
    """``Encoder.transform`` for plain dicts, without pandas (the same layout, checked by a test).

    Values must already be valid (the API validates them); ``None`` or an absent key is "not recorded".
    """
    spec, params = encoder.spec, encoder.params
    out = np.zeros((len(records), encoder.width), dtype=np.float32)
    for r, record in enumerate(records):
        col = 0
        for f in spec.features:
            value = record.get(f.name)
            missing = value is None or (isinstance(value, float) and math.isnan(value))
            if f.kind is FeatureKind.NUMERIC:
                if not missing:
                    z = (float(value) - params.means.get(f.name, 0.0)) / (params.stds.get(f.name, 1.0) or 1.0)
                    out[r, col] = min(max(z, -CLIP), CLIP)
                col += 1
            elif f.kind is FeatureKind.BOOLEAN:
                out[r, col] = 0.0 if missing else float(str(value).lower() in ("true", "1", "1.0"))
                col += 1
            else:
                values = f.values or []
                if not missing and str(value) in values:
                    out[r, col + values.index(str(value))] = 1.0
                col += len(values)
            if not f.required:
                out[r, col] = float(missing)
                col += 1
    return out


@dataclass
class TaskModel:
    """One task's registered model: spec, federated encoding, weights and calibration."""

    spec: TaskSpec
    encoding: EncodingParams
    flat: np.ndarray
    calibration: Calibration = field(default_factory=Calibration)
    ref: ModelRef | None = None

    def __post_init__(self) -> None:
        self.encoder = Encoder(self.spec, self.encoding)
        self.model = set_flat(build_model(self.spec, self.encoder.width), self.flat)
        self.model.eval()
        body = self.model.body if isinstance(self.model, OrdinalModel) else self.model
        self._linear = isinstance(body, torch.nn.Linear)
        if self._linear:
            self._w = body.weight.detach().numpy().astype(np.float64).T  # (width, out)
            self._b = body.bias.detach().numpy().astype(np.float64)
        if isinstance(self.model, OrdinalModel):
            self._cuts = self.model.cutpoints().detach().numpy().astype(np.float64)

    def raw(self, x: np.ndarray) -> np.ndarray:
        """The body's output: (n, 1) score/logit or (n, K) logits."""
        if self._linear:
            return x @ self._w + self._b
        body = self.model.body if isinstance(self.model, OrdinalModel) else self.model
        with torch.no_grad():
            return body(torch.as_tensor(x, dtype=torch.float32)).numpy().astype(np.float64)

    def log_odds(self, x: np.ndarray) -> np.ndarray:
        """Binary tasks: the calibrated log-odds of the positive class, shape (n,)."""
        cal = self.calibration
        z = self.raw(x)[:, 0]
        return cal.slope * z + cal.intercept if cal.kind == "platt" else z

    def proba(self, x: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities, shape (n, K)."""
        kind, cal = self.spec.label.kind, self.calibration
        t = cal.temperature if cal.kind == "temperature" else 1.0
        if kind == "binary":
            p = 1.0 / (1.0 + np.exp(-self.log_odds(x)))
            return np.stack([1 - p, p], axis=1)
        if kind == "ordinal":
            cum = 1.0 / (1.0 + np.exp(-(self._cuts[None, :] - self.raw(x)[:, :1]) / t))
            n = len(x)
            probs = np.diff(np.concatenate([np.zeros((n, 1)), cum, np.ones((n, 1))], axis=1), axis=1)
            return np.clip(probs, 0.0, 1.0)
        z = self.raw(x) / t
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


class Advisor:
    """Scores patients with the triage, diagnosis and referral-risk models and the tier policy."""

    def __init__(self, models: Mapping[str, TaskModel], policy: TierPolicy, *, top_k: int = 3,
                 explain_k: int = 6, cards: Mapping[str, str] | None = None) -> None:
        missing = [t for t in TASKS if t not in models]
        if missing:
            raise ValueError(f"the advisor needs a model for each of {TASKS}; missing {missing}")
        self.tasks = dict(models)
        self.policy = policy
        self.top_k, self.explain_k = top_k, explain_k
        self.spec = self.tasks["referral_risk"].spec  # the input features (the same for all three)
        self.cards = dict(cards or {})
        self.models = {t: m.ref or ModelRef(name=f"fenji-{t}", version="unregistered") for t, m in self.tasks.items()}

    def model_card(self, task: str) -> str:
        if task not in self.tasks:
            raise KeyError(task)
        return self.cards.get(task, f"# {self.models[task].name} version {self.models[task].version}\n\nNo card.")

    def assess(self, records: Sequence[Mapping[str, object]]) -> list[Assessment]:
        """One ``Assessment`` per record (a dict of feature values; ``None`` = not recorded)."""
        if not records:
            return []
        triage, diagnosis, referral = self.tasks["triage"], self.tasks["diagnosis"], self.tasks["referral_risk"]
        p_triage = triage.proba(encode_records(triage.encoder, records))
        levels = predicted_level(p_triage)
        p_diag = diagnosis.proba(encode_records(diagnosis.encoder, records))
        x_ref = encode_records(referral.encoder, records)
        log_odds, contributions, names = occlusion_contributions(
            referral.log_odds, x_ref, referral.encoder.baseline(), referral.encoder.feature_slices())
        risk = 1.0 / (1.0 + np.exp(-log_odds))
        t_classes, d_classes = triage.spec.label.classes, diagnosis.spec.label.classes
        t_label, d_label = triage.spec.label, diagnosis.spec.label
        answers = []
        for i, record in enumerate(records):
            level = t_classes[int(levels[i])]
            top = np.argsort(-p_diag[i])[: self.top_k]
            answers.append(Assessment(
                triage=Triage(level=level, title=_titles(t_label.class_display.get(level), level),
                              probabilities={c: float(p) for c, p in zip(t_classes, p_triage[i])}),
                referral_risk=ReferralRisk(probability=float(risk[i]), calibrated=referral.calibration.kind != "none"),
                tier=recommend_tier(int(level), float(risk[i]), self.policy),
                diagnoses=[DiagnosisSuggestion(code=d_classes[j], title=_titles(d_label.class_display.get(d_classes[j]),
                                                                                d_classes[j]),
                                               probability=float(p_diag[i, j])) for j in top],
                explanation=[self._contribution(name, value, record)
                             for name, value in top_contributions(contributions[i], names, self.explain_k)],
                models=self.models,
            ))
        return answers

    def _contribution(self, name: str, value: float, record: Mapping[str, object]) -> Contribution:
        feature = self.spec.feature(name)
        raw = record.get(name)
        shown: str | float | None = raw if isinstance(raw, (str, float, int)) and not isinstance(raw, bool) else (
            None if raw is None else str(raw).lower())
        return Contribution(feature=name, title=_titles(feature.display, name), value=shown, contribution=value,
                            direction="up" if value > 0 else "down")

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def from_registry(cls, tracking_uri: str, *, alias: str | None = None,
                      versions: Mapping[str, str] | None = None, policy: TierPolicy | None = None,
                      cache_dir: Path | None = None) -> Advisor:
        """Load each task's model version from MLflow: by ``versions[task]``, else by ``alias``
        (e.g. "production"), else the newest version; each bundle's digest is verified."""
        models, cards, policies = {}, {}, {}
        for task in TASKS:
            loaded = load_task_model(tracking_uri, task, version=(versions or {}).get(task), alias=alias,
                                     cache_dir=cache_dir)
            models[task], cards[task], policies[task] = loaded
        return cls(models, policy or policies["referral_risk"] or load_policy(), cards=cards)

    @classmethod
    def from_folders(cls, folders: Mapping[str, tuple[Path, str]], policy: TierPolicy | None = None) -> Advisor:
        """From version folders already on the node (``task -> (folder, version)``): works offline."""
        models, cards, policies = {}, {}, {}
        for task, (folder, version) in folders.items():
            models[task], cards[task], policies[task] = load_bundle_model(folder, task, version)
        return cls(models, policy or policies["referral_risk"], cards=cards)


def _titles(display: Mapping[str, str] | None, fallback: str) -> dict[str, str]:
    display = display or {}
    return {"zh": display.get("zh") or display.get("en") or fallback, "en": display.get("en") or fallback}


def load_task_model(tracking_uri: str, task: str, *, version: str | None = None, alias: str | None = None,
                    cache_dir: Path | None = None) -> tuple[TaskModel, str, TierPolicy | None]:
    """One task's registered model version from MLflow: ``(model, card markdown, tier policy)``.

    The version's bundle is downloaded (into ``cache_dir`` if given) and its digest checked against
    the version's ``bundle-sha256`` tag before anything is loaded from it.
    """
    import mlflow

    from models.bundle import bundle_digest
    from models.errors import RegistryError

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
        for artifact in ("bundle", "model_card.md"):  # only what serving needs
            mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=artifact, tracking_uri=tracking_uri,
                                                dst_path=str(folder))
    except (mlflow.exceptions.MlflowException, ValueError, OSError) as exc:
        raise RegistryError(f"no usable version of {name} in {tracking_uri} ({alias or version or 'latest'}): {exc}") from exc
    expected = mv.tags.get("bundle-sha256")
    actual = bundle_digest(folder / "bundle")
    if expected != actual:
        raise RegistryError(f"{name} version {mv.version}: bundle digest {actual[:12]}… does not match the "
                            f"registered {str(expected)[:12]}…; refusing to serve it")
    return load_bundle_model(folder, task, str(mv.version))


def load_bundle_model(folder: Path, task: str, version: str) -> tuple[TaskModel, str, TierPolicy]:
    """A downloaded version folder (``bundle/`` plus ``model_card.md``) as a ``TaskModel``."""
    from models.bundle import read_bundle

    spec, encoding, calibration, policy, flat = read_bundle(Path(folder) / "bundle")
    card_file = Path(folder) / "model_card.md"
    card = card_file.read_text(encoding="utf-8") if card_file.exists() else ""
    ref = ModelRef(name=f"fenji-{task}", version=version, card_url=f"/api/v1/model/{task}/card")
    return TaskModel(spec, encoding, flat, calibration, ref), card, policy
