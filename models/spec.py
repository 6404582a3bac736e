"""Task specifications: what a prediction task reads, predicts and trains.

A task is declared in a YAML file (see ``models/tasks/*.yaml``); a user's own file works the same
way as a built-in one, with no code change.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from models.errors import TaskSpecError
from models.text import DEFAULT_BUCKETS, DEFAULT_HASH_KEY
from models.yamlfile import load_yaml_model, safe_load

__all__ = [
    "FeatureKind",
    "FeatureSpec",
    "LabelSpec",
    "ModelSpec",
    "TaskSpec",
    "builtin_tasks",
    "load_task",
]

TASKS_DIR = Path(__file__).parent / "tasks"
FEATURE_SETS_DIR = TASKS_DIR / "features"


class FeatureKind(str, Enum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    BOOLEAN = "boolean"
    TEXT = "text"  # free text, hashed into a fixed number of columns (models/text.py)


class FeatureSpec(BaseModel):
    """One input feature, as the site records it after mapping."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: FeatureKind
    unit: str | None = None
    description: str | None = None
    min: float | None = None
    max: float | None = None
    values: list[str] | None = None
    required: bool = False
    display: dict[str, str] = Field(default_factory=dict, description="language code -> display name")
    value_display: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="categorical value -> language code -> display name")
    # Text features only: the hashed columns and the hash's key (public, fixed by the task, the same
    # at every site; changing either makes a new layout, so a new model).
    buckets: int | None = Field(default=None, ge=16, le=4096)
    hash_key: str | None = Field(default=None, min_length=1, max_length=64)

    @model_serializer(mode="wrap")
    def _without_unset_text_settings(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out when unset, so a spec without text features dumps (and digests: the site's
        # approved plan, node_agent/policy.plan_digest) exactly as before text features existed.
        data = handler(self)
        for key in ("buckets", "hash_key"):
            if data.get(key) is None:
                data.pop(key, None)
        return data

    def title(self, lang: str = "en") -> str:
        return self.display.get(lang) or self.display.get("en") or self.name

    @field_validator("values", mode="before")
    @classmethod
    def _values_as_text(cls, v: Any) -> Any:
        return [str(x) for x in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _check_kind(self) -> FeatureSpec:
        if self.kind is FeatureKind.CATEGORICAL and not self.values:
            raise ValueError(f"categorical feature {self.name!r} needs its allowed 'values'")
        if self.kind is not FeatureKind.NUMERIC and (self.min is not None or self.max is not None):
            raise ValueError(f"only numeric features take min/max ({self.name!r})")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r}: min {self.min} > max {self.max}")
        if self.values is not None:
            self.values = [str(v) for v in self.values]
        if self.kind is FeatureKind.TEXT:
            if self.values:
                raise ValueError(f"text feature {self.name!r} takes no 'values'")
            self.buckets = self.buckets or DEFAULT_BUCKETS
            self.hash_key = self.hash_key or DEFAULT_HASH_KEY
            if len(self.hash_key.encode("utf-8")) > 64:
                raise ValueError(f"text feature {self.name!r}: hash_key is longer than 64 bytes")
        elif self.buckets is not None or self.hash_key is not None:
            raise ValueError(f"only text features take buckets/hash_key ({self.name!r})")
        return self


class LabelSpec(BaseModel):
    """The outcome a task predicts: binary, ordinal or multiclass, with its classes."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["binary", "ordinal", "multiclass"]
    classes: list[str]
    description: str | None = None
    class_display: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="class -> language code -> display name")

    def class_title(self, cls: str, lang: str = "en") -> str:
        names = self.class_display.get(cls, {})
        return names.get(lang) or names.get("en") or cls

    @field_validator("classes", mode="before")
    @classmethod
    def _classes_as_text(cls, v: Any) -> Any:
        return [str(x) for x in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _check_classes(self) -> LabelSpec:
        self.classes = [str(c) for c in self.classes]
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("label classes must be distinct")
        if self.kind == "binary" and len(self.classes) != 2:
            raise ValueError("a binary label has exactly two classes (negative first)")
        if len(self.classes) < 2:
            raise ValueError("a label needs at least two classes")
        return self


class ModelSpec(BaseModel):
    """The model family a task trains, and its default training settings."""

    model_config = ConfigDict(extra="forbid")

    family: Literal["logistic", "mlp"] = "logistic"
    hidden: list[int] = Field(default_factory=lambda: [32])
    local_epochs: int = 5
    learning_rate: float = 0.05
    batch_size: int = 64
    weight_decay: float = 1e-4


class TaskSpec(BaseModel):
    """A prediction task: features, label, record id and model family."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    record_id: str | None = None
    features: list[FeatureSpec]
    label: LabelSpec
    model: ModelSpec = Field(default_factory=ModelSpec)

    @field_validator("features", mode="before")
    @classmethod
    def _named_feature_set(cls, v: Any) -> Any:
        """``features: first_visit`` reads the shared feature set ``tasks/features/first_visit.yaml``;
        in a list, a name stands for that set's features (``[first_visit, {name: note, ...}]``)."""
        if isinstance(v, str):
            return _feature_set(v)
        if isinstance(v, list):
            return [f for item in v for f in (_feature_set(item) if isinstance(item, str) else [item])]
        return v

    @model_validator(mode="after")
    def _check_names(self) -> TaskSpec:
        names = [f.name for f in self.features] + [self.label.name]
        if self.record_id:
            names.append(self.record_id)
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"column names used twice: {sorted(dupes)}")
        if not self.features:
            raise ValueError("a task needs at least one feature")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def feature(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False,
                              allow_unicode=True)


def _feature_set(name: str) -> list:
    path = FEATURE_SETS_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in FEATURE_SETS_DIR.glob("*.yaml")))
        raise ValueError(f"unknown feature set {name!r}: give a list of features or one of: {known}")
    return safe_load(path.read_text(encoding="utf-8"))


def builtin_tasks() -> list[str]:
    """Names of the task specs that ship with Fenji."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def load_task(task: str | Path) -> TaskSpec:
    """Load a task by built-in name or from a YAML file path.

    Raises
    ------
    TaskSpecError
        If the name is unknown, or the file does not exist, is a folder or unreadable, is not YAML,
        or does not describe a valid task.
    """
    path = Path(task)
    if not path.suffix and not path.is_file():
        if (TASKS_DIR / f"{task}.yaml").exists():  # a built-in name wins over a folder of that name
            path = TASKS_DIR / f"{task}.yaml"
        elif path.is_dir():
            raise _folder_error(task)
        else:
            raise TaskSpecError(
                f"unknown task {str(task)!r}: built-in tasks are {', '.join(builtin_tasks())}, "
                "or give the path of a task YAML file"
            )
    elif path.is_dir():
        raise _folder_error(task)
    return load_yaml_model(path, TaskSpec, TaskSpecError, "task")


def _folder_error(task: str | Path) -> TaskSpecError:
    return TaskSpecError(f"task {str(task)!r} is a folder: give a built-in task name "
                         f"({', '.join(builtin_tasks())}) or the path of a task YAML file")
