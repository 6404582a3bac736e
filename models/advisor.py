"""The referral advisor: the three clinical models together, answering for one patient (or many) at once.

Triage level (ordinal model, calibrated), referral risk (binary model, Platt-calibrated), top
diagnosis groups (multiclass model, calibrated), the recommended tier under the governance tier
policy, and the features that pushed the referral risk most (for a model that reads a free-text
complaint, the record's own words that did: ``models.explain.text_word_contributions``). Inference
is plain NumPy over the
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
from pydantic import TypeAdapter

from models.assessment import (
    Assessment,
    ModelRef,
)
from models.calibration import Calibration
from models.encoding import CLIP, Encoder, EncodingParams
from models.explain import occlusion_contributions, text_word_contributions
from models.nets import OrdinalModel, build_model, set_flat
from models.policy import TierPolicy, recommend_tier
from models.spec import FeatureKind, TaskSpec
from models.text import normalise
from models.training import predicted_level

__all__ = ["CARD_FILES", "TASKS", "Advisor", "TaskModel", "encode_records", "load_bundle_model"]

TASKS = ("triage", "diagnosis", "referral_risk")
# A version's model card per language, as the registry names the files (coordinator.model_card writes them)
CARD_FILES = {"en": "model_card.md", "zh-CN": "model_card.zh-CN.md"}
_ASSESSMENTS = TypeAdapter(list[Assessment])


class RecordEncoder:
    """``Encoder.transform``'s layout for plain dicts, without pandas, vectorised over rows and features
    (the serving fast path: a handful of NumPy operations whatever the number of patients).

    Values must already be valid (the API validates them); ``None``, NaN or an absent key is "not
    recorded". A test checks the result equals ``Encoder.transform``. Encoders of tasks that read the
    same features share the parsing of the records (``parsed``), and differ only in arithmetic.
    """

    def __init__(self, encoder: Encoder) -> None:
        self.width = encoder.width
        params = encoder.params
        values: list[str] = []  # numeric, then boolean features: one float matrix, NaN = not recorded
        booleans: list[str] = []
        categorical: list[tuple[str, dict[str, int]]] = []
        value_cols, cat_offsets, means, stds = {}, [], {}, {}
        missing: dict[str, int] = {}  # feature -> its "not recorded" indicator column
        # Free text: (name, first hashed column, hasher, its "not recorded" column or -1), hashed per record.
        self.texts: list[tuple[str, int, object, int]] = []
        col = 0
        for f in encoder.spec.features:
            if f.kind is FeatureKind.TEXT:
                hasher = encoder.hashers[f.name]
                start, col = col, col + hasher.buckets
                self.texts.append((f.name, start, hasher, -1 if f.required else col))
                col += 0 if f.required else 1
                continue
            if f.kind is FeatureKind.CATEGORICAL:
                categorical.append((f.name, {v: i for i, v in enumerate(f.values or [])}))
                cat_offsets.append(col)
                col += len(f.values or [])
            else:
                (values if f.kind is FeatureKind.NUMERIC else booleans).append(f.name)
                value_cols[f.name] = col
                numeric = f.kind is FeatureKind.NUMERIC
                means[f.name] = params.means.get(f.name, 0.0) if numeric else 0.0
                stds[f.name] = (params.stds.get(f.name, 1.0) or 1.0) if numeric else 1.0
                col += 1
            if not f.required:
                missing[f.name] = col
                col += 1
        self.numeric, self.booleans, self.categorical = values, booleans, categorical
        names = values + booleans
        self._value_cols = np.asarray([value_cols[n] for n in names], int)
        self._means = np.asarray([means[n] for n in names], float)
        self._stds = np.asarray([stds[n] for n in names], float)
        self._cat_offsets = np.asarray(cat_offsets, int)
        order = names + [name for name, _ in categorical]  # the columns of the "absent" matrix
        self._flag_src = np.asarray([order.index(n) for n in missing], int)
        self._flag_cols = np.asarray(list(missing.values()), int)
        self.layout = (tuple(values), tuple(booleans), tuple((n, tuple(lk)) for n, lk in categorical))

    def parse(self, records: Sequence[Mapping[str, object]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(values (n, numeric+boolean) with NaN, category codes (n, categorical), absent (n, all))``."""
        n = len(records)
        numeric, booleans, categorical = self.numeric, self.booleans, self.categorical
        values = np.array([[r.get(name) for name in numeric] + [_flag_value(r.get(name)) for name in booleans]
                           for r in records], dtype=float).reshape(n, len(numeric) + len(booleans))
        raw = [[r.get(name) for name, _ in categorical] for r in records]
        codes = np.array([[lookup.get(v if v.__class__ is str else str(v), -1) if not _absent(v) else -2
                           for v, (_, lookup) in zip(row, categorical)] for row in raw], int).reshape(n, -1)
        absent = np.concatenate([np.isnan(values), codes == -2], axis=1)
        return values, codes, absent

    def encode(self, records: Sequence[Mapping[str, object]], parsed: dict | None = None) -> np.ndarray:
        """The encoded rows; ``parsed`` (a dict kept for one batch) shares parsing between encoders."""
        if parsed is None:
            values, codes, absent = self.parse(records)
        else:
            if self.layout not in parsed:
                parsed[self.layout] = self.parse(records)
            values, codes, absent = parsed[self.layout]
        out = np.zeros((len(records), self.width), dtype=np.float32)
        if values.shape[1]:
            z = np.minimum(np.maximum((values - self._means) / self._stds, -CLIP), CLIP)
            out[:, self._value_cols] = np.where(absent[:, : values.shape[1]], 0.0, z)
        if codes.shape[1]:
            rows, feats = np.nonzero(codes >= 0)
            out[rows, self._cat_offsets[feats] + codes[rows, feats]] = 1.0
        if len(self._flag_cols):
            out[:, self._flag_cols] = absent[:, self._flag_src]
        for name, start, hasher, flag in self.texts:
            texts = [r.get(name) for r in records]
            out[:, start : start + hasher.buckets] = hasher.transform(texts)
            if flag >= 0:  # empty, or only punctuation: not recorded (as ``Encoder.transform``)
                out[:, flag] = [0.0 if normalise(t) else 1.0 for t in texts]
        return out


_FLAGS = {True: 1.0, False: 0.0, None: math.nan}


def _absent(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _flag_value(value: object) -> float:
    """A boolean feature's value: 1.0, 0.0, or NaN when not recorded."""
    if value is None or value.__class__ is bool:
        return _FLAGS[value]
    if _absent(value):
        return math.nan
    return float(str(value).lower() in ("true", "1", "1.0"))


def encode_records(encoder: Encoder, records: Sequence[Mapping[str, object]]) -> np.ndarray:
    """``Encoder.transform`` for plain dicts (see ``RecordEncoder``; a ``TaskModel`` keeps its own)."""
    return RecordEncoder(encoder).encode(records)


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
        self.records = RecordEncoder(self.encoder)
        self.baseline = self.encoder.baseline()
        slices = self.encoder.feature_slices()
        self.feature_names = [name for name, cols in slices.items() if cols]
        self._owner = np.zeros((self.encoder.width, len(self.feature_names)))  # column -> the feature owning it
        for f, name in enumerate(self.feature_names):
            self._owner[slices[name], f] = 1.0
        self._slices = slices

    def encode(self, records: Sequence[Mapping[str, object]], parsed: dict | None = None) -> np.ndarray:
        return self.records.encode(records, parsed)

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

    def explain(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Binary tasks: ``(log-odds (n,), contributions (n, n_features), feature names)``, each
        contribution measured against ``baseline`` (see ``models.explain``). For the logistic model
        this is the exact closed form ``slope · w · (x - baseline)`` summed over each feature's
        columns, the same as the occlusion (a test checks); otherwise one occlusion per feature."""
        if not self._linear:
            return occlusion_contributions(self.log_odds, x, self.baseline, self._slices)
        cal = self.calibration
        slope = cal.slope if cal.kind == "platt" else 1.0
        contributions = ((x - self.baseline) * (slope * self._w[:, 0])) @ self._owner
        return self.log_odds(x), contributions, self.feature_names

    def text_words(self, x: np.ndarray, record: Mapping[str, object], *, top: int) -> list[tuple[str, str, float]]:
        """Binary tasks: ``(text feature, word, contribution)`` of the words of ``record``'s own texts that
        moved its log-odds most, strongest first (``x`` is its encoded row). The words are recomputed
        from the record's text here; nothing maps a hashed column back to a word."""
        found = [(name, word, value) for name, hasher in self.encoder.hashers.items()
                 for word, value in text_word_contributions(self.log_odds, x, self.encoder.text_columns(name),
                                                            hasher.weights(record.get(name)), top=top)
                 if value != 0]
        return sorted(found, key=lambda item: -abs(item[2]))[:top]

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
                 explain_k: int = 6, explain_words: int = 3,
                 cards: Mapping[str, str | Mapping[str, str]] | None = None) -> None:
        missing = [t for t in TASKS if t not in models]
        if missing:
            raise ValueError(f"the advisor needs a model for each of {TASKS}; missing {missing}")
        self.tasks = dict(models)
        self.policy = policy
        self.top_k, self.explain_k, self.explain_words = top_k, explain_k, explain_words
        self.spec = _input_spec(self.tasks)
        self.cards = dict(cards or {})
        self.models = {t: _answering(t, m.ref) for t, m in self.tasks.items()}
        t_label, d_label = self.tasks["triage"].spec.label, self.tasks["diagnosis"].spec.label
        self._triage_titles = {c: _titles(t_label.class_display.get(c), c) for c in t_label.classes}
        self._diagnosis_titles = {c: _titles(d_label.class_display.get(c), c) for c in d_label.classes}
        self._feature_titles = {f.name: _titles(f.display, f.name) for f in self.spec.features}

    def model_card(self, task: str, lang: str = "en") -> str:
        """The markdown card of the version answering ``task``, in ``lang`` (zh-CN or en) if the version
        has a card in it, else in English (versions registered before cards were written in Chinese)."""
        if task not in self.tasks:
            raise KeyError(task)
        card = self.cards.get(task)
        if isinstance(card, str):
            return card
        if card:
            return card.get(lang) or card.get("en") or next(iter(card.values()))
        return f"# {self.models[task].name} version {self.models[task].version}\n\nNo card."

    def assess(self, records: Sequence[Mapping[str, object]]) -> list[Assessment]:
        """One ``Assessment`` per record (a dict of feature values; ``None`` = not recorded)."""
        if not records:
            return []
        triage, diagnosis, referral = self.tasks["triage"], self.tasks["diagnosis"], self.tasks["referral_risk"]
        parsed: dict = {}  # the three models read the same features: parse the records once
        p_triage = triage.proba(triage.encode(records, parsed))
        levels = predicted_level(p_triage)
        p_diag = diagnosis.proba(diagnosis.encode(records, parsed))
        top_diag = np.argsort(-p_diag, axis=1)[:, : self.top_k]
        x_referral = referral.encode(records, parsed)
        log_odds, contributions, names = referral.explain(x_referral)
        risk = 1.0 / (1.0 + np.exp(-log_odds))
        order = np.argsort(-np.abs(contributions), axis=1)[:, : self.explain_k]
        t_classes, d_classes = triage.spec.label.classes, diagnosis.spec.label.classes
        calibrated = referral.calibration.kind != "none"
        answers = []
        for i, record in enumerate(records):
            level = t_classes[int(levels[i])]
            answers.append({
                "triage": {"level": level, "title": self._triage_titles[level],
                           "probabilities": dict(zip(t_classes, p_triage[i].tolist()))},
                "referral_risk": {"probability": float(risk[i]), "calibrated": calibrated},
                "tier": recommend_tier(int(level), float(risk[i]), self.policy),
                "diagnoses": [{"code": d_classes[j], "title": self._diagnosis_titles[d_classes[j]],
                               "probability": float(p_diag[i, j])} for j in top_diag[i]],
                "explanation": ([self._contribution(names[j], float(contributions[i, j]), record)
                                 for j in order[i] if contributions[i, j] != 0] if not referral.encoder.hashers
                                else self._with_words(referral, x_referral[i], contributions[i], names, record)),
                "models": self.models,
            })
        return _ASSESSMENTS.validate_python(answers)  # one validation of the whole batch

    def _with_words(self, model: TaskModel, x: np.ndarray, contributions: np.ndarray, names: list[str],
                    record: Mapping[str, object]) -> list[dict[str, object]]:
        """The explanation of a model that reads free text: a text feature is shown as the words of this
        record's own text that pushed the risk (up to ``explain_words`` of them, in the place of the
        feature's one item), the other features as usual; strongest first, ``explain_k`` in all."""
        words = model.text_words(x, record, top=min(self.explain_words, self.explain_k))
        worded = {name for name, _, _ in words}
        features = [(names[j], float(contributions[j])) for j in np.argsort(-np.abs(contributions))
                    if contributions[j] != 0 and names[j] not in worded][: self.explain_k - len(words)]
        items = [self._contribution(name, value, record) for name, value in features]
        items += [{"feature": name, "title": self._feature_titles[name], "value": word, "contribution": value,
                   "direction": "up" if value > 0 else "down", "word": True} for name, word, value in words]
        return sorted(items, key=lambda item: -abs(item["contribution"]))

    def _contribution(self, name: str, value: float, record: Mapping[str, object]) -> dict[str, object]:
        raw = record.get(name)
        if raw is None or isinstance(raw, str):
            shown: str | float | None = raw
        elif isinstance(raw, (bool, np.bool_)):
            shown = str(bool(raw)).lower()
        elif isinstance(raw, (int, float, np.number)):
            shown = float(raw)
        else:
            shown = str(raw).lower()
        return {"feature": name, "title": self._feature_titles[name], "value": shown, "contribution": value,
                "direction": "up" if value > 0 else "down"}

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def from_folders(cls, folders: Mapping[str, tuple[Path, str]], policy: TierPolicy | None = None) -> Advisor:
        """From version folders already on the node (``task -> (folder, version)``): works offline."""
        models, cards, policies = {}, {}, {}
        for task, (folder, version) in folders.items():
            models[task], cards[task], policies[task] = load_bundle_model(folder, task, version)
        return cls(models, policy or policies["referral_risk"], cards=cards)


def _answering(task: str, ref: ModelRef | None) -> ModelRef:
    """The model's reference as the answer to ``task``: its card is found by the task it answers (a
    ``referral_risk_text`` model answering the referral risk links to the ``referral_risk`` card)."""
    if ref is None:
        return ModelRef(name=f"fenji-{task}", version="unregistered")
    return ref.model_copy(update={"card_url": f"/api/v1/model/{task}/card"}) if ref.card_url else ref


def _input_spec(tasks: Mapping[str, TaskModel]) -> TaskSpec:
    """What the advisor reads: the referral model's features, then any feature only another model reads
    (a ``triage_text`` model's complaint text next to a referral model without one), so that no served
    model is left without an input it was trained on."""
    spec = tasks["referral_risk"].spec
    extra, seen = [], set(spec.feature_names)
    for task in TASKS:
        for f in tasks[task].spec.features:
            if f.name not in seen:
                seen.add(f.name)
                extra.append(f.model_copy(update={"required": False}))  # only some models need it
    return spec.model_copy(update={"features": [*spec.features, *extra]}) if extra else spec


def _titles(display: Mapping[str, str] | None, fallback: str) -> dict[str, str]:
    display = display or {}
    return {"zh": display.get("zh") or display.get("en") or fallback, "en": display.get("en") or fallback}


def load_bundle_model(folder: Path, task: str, version: str) -> tuple[TaskModel, dict[str, str], TierPolicy]:
    """A downloaded version folder (``bundle/`` plus its model cards) as a ``TaskModel``, with its
    cards (language -> markdown; the languages it has) and its tier policy."""
    from models.bundle import read_bundle

    spec, encoding, calibration, policy, flat = read_bundle(Path(folder) / "bundle")
    cards = {lang: (Path(folder) / name).read_text(encoding="utf-8")
             for lang, name in CARD_FILES.items() if (Path(folder) / name).is_file()}
    ref = ModelRef(name=f"fenji-{task}", version=version, card_url=f"/api/v1/model/{task}/card")
    return TaskModel(spec, encoding, flat, calibration, ref), cards, policy
