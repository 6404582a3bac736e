"""Turn a task's records into model inputs, with encoding parameters every site agrees on.

The input layout depends on the task spec alone, so every site builds the same columns without
seeing each other's data. The only data-dependent parameters (means and standard deviations of the
numeric features) come from federated, encrypted sufficient statistics (see ``SiteStatistics``).
A value missing for a patient, or never recorded at a site, becomes 0 after standardisation plus a
missing indicator set to 1: never a plausible made-up value.

A text feature owns ``buckets`` columns named ``<feature>#<bucket>`` (``models/text.py``): feature
hashing needs no vocabulary, so the layout, and everything that leaves a site, holds no word of any
text. An empty text counts as not recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from models.spec import FeatureKind, TaskSpec
from models.text import TextHasher, normalise

__all__ = ["Encoder", "EncodingParams", "SiteStatistics", "encode_labels"]

CLIP = 6.0


@dataclass
class SiteStatistics:
    """Sufficient statistics of one site (or of the sum over sites) for the encoding.

    Laid out as one flat vector so it can be encrypted and added: per numeric feature
    ``[count, sum, sum of squares]``, then the row count, then one count per label class, then
    one count per non-numeric encoded column (each categorical value, each boolean's "true", each
    missing indicator). The last part gives the federation's average encoded patient, the baseline
    that explanations measure a patient against.
    """

    spec: TaskSpec
    vector: np.ndarray

    @classmethod
    def size(cls, spec: TaskSpec) -> int:
        return 3 * len(cls.numeric(spec)) + 1 + len(spec.label.classes) + len(cls.counted_columns(spec))

    @staticmethod
    def counted_columns(spec: TaskSpec) -> list[str]:
        numeric = set(SiteStatistics.numeric(spec))
        return [c for c in Encoder(spec).columns if c not in numeric]

    @staticmethod
    def numeric(spec: TaskSpec) -> list[str]:
        return [f.name for f in spec.features if f.kind is FeatureKind.NUMERIC]

    @classmethod
    def from_frame(cls, spec: TaskSpec, frame: pd.DataFrame) -> SiteStatistics:
        parts: list[float] = []
        for name in cls.numeric(spec):
            if name not in frame:
                parts += [0.0, 0.0, 0.0]
                continue
            col = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
            col = col[~np.isnan(col)]
            parts += [float(col.size), float(col.sum()), float((col**2).sum())]
        parts.append(float(len(frame)))
        labels = frame[spec.label.name].astype(str)
        parts += [float((labels == c).sum()) for c in spec.label.classes]
        encoder = Encoder(spec)
        encoded = encoder.transform(frame).sum(axis=0)
        index = {c: i for i, c in enumerate(encoder.columns)}
        parts += [float(encoded[index[c]]) for c in cls.counted_columns(spec)]
        return cls(spec, np.asarray(parts, dtype=float))

    def encoding_params(self) -> EncodingParams:
        means: dict[str, float] = {}
        stds: dict[str, float] = {}
        for i, name in enumerate(self.numeric(self.spec)):
            count, total, squares = self.vector[3 * i : 3 * i + 3]
            if count < 2:
                means[name], stds[name] = 0.0, 1.0
                continue
            mean = total / count
            var = max(squares / count - mean**2, 0.0) * count / (count - 1)
            means[name], stds[name] = float(mean), float(np.sqrt(var) or 1.0)
        offset = 3 * len(means)
        n_rows = float(self.vector[offset])
        n_classes = len(self.spec.label.classes)
        class_counts = [float(c) for c in self.vector[offset + 1 : offset + 1 + n_classes]]
        counts = self.vector[offset + 1 + n_classes :]
        column_means = {c: float(v) / max(n_rows, 1.0) for c, v in zip(self.counted_columns(self.spec), counts)}
        return EncodingParams(means=means, stds=stds, n_rows=n_rows, class_counts=class_counts,
                              column_means=column_means)


@dataclass
class EncodingParams:
    """Global encoding parameters, decrypted from the sum over at least ``min-sites`` sites."""

    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)
    n_rows: float = 0.0
    class_counts: list[float] = field(default_factory=list)
    column_means: dict[str, float] = field(default_factory=dict)  # non-numeric encoded columns

    def to_dict(self) -> dict:
        return {"means": self.means, "stds": self.stds, "n_rows": self.n_rows, "class_counts": self.class_counts,
                "column_means": self.column_means}

    @classmethod
    def from_dict(cls, raw: dict) -> EncodingParams:
        return cls(
            means={k: float(v) for k, v in raw.get("means", {}).items()},
            stds={k: float(v) for k, v in raw.get("stds", {}).items()},
            n_rows=float(raw.get("n_rows", 0.0)),
            class_counts=[float(c) for c in raw.get("class_counts", [])],
            column_means={k: float(v) for k, v in raw.get("column_means", {}).items()},
        )


class Encoder:
    """Encodes records of one task into a float32 matrix with a fixed, spec-defined layout."""

    def __init__(self, spec: TaskSpec, params: EncodingParams | None = None) -> None:
        self.spec = spec
        self.params = params or EncodingParams()
        self.columns: list[str] = []
        self.hashers: dict[str, TextHasher] = {}
        self._slices: dict[str, list[int]] = {}
        for f in spec.features:
            start = len(self.columns)
            if f.kind is FeatureKind.CATEGORICAL:
                self.columns += [f"{f.name}={v}" for v in f.values or []]
            elif f.kind is FeatureKind.TEXT:
                self.hashers[f.name] = hasher = TextHasher(f.buckets or 0, f.hash_key or "")
                self.columns += [f"{f.name}#{b}" for b in range(hasher.buckets)]
            else:
                self.columns.append(f.name)
            if not f.required:
                self.columns.append(f"{f.name}:missing")
            self._slices[f.name] = list(range(start, len(self.columns)))

    @property
    def width(self) -> int:
        return len(self.columns)

    def baseline(self) -> np.ndarray:
        """The federation's average encoded patient: numeric features at their mean (0 after
        standardisation), other columns at their federated frequency."""
        return np.asarray([self.params.column_means.get(c, 0.0) for c in self.columns], dtype=np.float32)

    def feature_slices(self) -> dict[str, list[int]]:
        """Feature name -> the encoded columns it owns (its value columns and its missing indicator)."""
        return {name: list(cols) for name, cols in self._slices.items()}

    def text_columns(self, name: str) -> list[int]:
        """The hashed columns of text feature ``name`` (without its missing indicator), bucket order."""
        start = self._slices[name][0]
        return list(range(start, start + self.hashers[name].buckets))

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        blocks: list[np.ndarray] = []
        n = len(frame)
        for f in self.spec.features:
            raw = frame[f.name] if f.name in frame else pd.Series([None] * n, index=frame.index)
            missing = raw.isna().to_numpy()
            if f.kind is FeatureKind.NUMERIC:
                values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
                mean = self.params.means.get(f.name, 0.0)
                std = self.params.stds.get(f.name, 1.0) or 1.0
                z = np.clip((values - mean) / std, -CLIP, CLIP)
                blocks.append(np.where(missing, 0.0, z)[:, None])
            elif f.kind is FeatureKind.TEXT:
                texts = raw.where(~missing, None).tolist()
                missing = np.asarray([not normalise(t) for t in texts])  # only punctuation: not recorded
                hashed = self.hashers[f.name].transform(texts)
                blocks.append(hashed.astype(float))
            elif f.kind is FeatureKind.BOOLEAN:
                text = raw.astype(object).where(~missing, "").astype(str).str.lower()
                blocks.append(text.isin(["true", "1", "1.0"]).to_numpy(dtype=float)[:, None])
            else:
                text = raw.astype(str).to_numpy()
                onehot = np.stack([(text == v) & ~missing for v in f.values or []], axis=1)
                blocks.append(onehot.astype(float))
            if not f.required:
                blocks.append(missing.astype(float)[:, None])
        return np.concatenate(blocks, axis=1).astype(np.float32) if blocks else np.zeros((n, 0), np.float32)


def encode_labels(spec: TaskSpec, frame: pd.DataFrame) -> np.ndarray:
    """Class indices (in the spec's order) of the label column."""
    index = {c: i for i, c in enumerate(spec.label.classes)}
    return frame[spec.label.name].astype(str).map(index).to_numpy(dtype=np.int64)
