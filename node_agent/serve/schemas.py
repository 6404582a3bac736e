"""What the API answers: public schemas, never DuckDB rows or advisor objects directly."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from models.assessment import DISCLAIMER, TIERS, Assessment, ModelRef
from models.spec import FeatureKind, TaskSpec
from node_agent.serve.access import Role

__all__ = [
    "DecisionPublic", "FormField", "FormOption", "FormSchema", "Health", "Me", "ModelInfo", "OutcomePublic",
    "ReloadResult", "ScoreResult", "TokenCreate", "form_schema",
]

Text = dict[str, str]
# DuckDB keeps naive UTC timestamps; the API always says they are UTC (RFC 3339 with an offset).
UTCDateTime = Annotated[datetime, AfterValidator(lambda d: d if d.tzinfo else d.replace(tzinfo=timezone.utc))]


class ScoreResult(Assessment):
    """An Assessment, plus which features were not recorded (and so were scored as missing)."""

    not_recorded: list[str] = Field(default_factory=list,
                                    description="features absent or null in the request, scored as missing")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Me(BaseModel):
    token_id: str
    name: str
    role: Role


class ModelInfo(BaseModel):
    task: str = Field(description="the task whose features the API reads")
    models: dict[str, ModelRef] = Field(description="task -> model version in use")
    features: dict[str, list[str]] = Field(
        default_factory=dict, description="task -> the input features its model reads (e.g. only a `*_text` model "
        "reads the free-text complaint; the others ignore it)")
    personalisation: dict[str, str] = Field(
        default_factory=dict, description="task -> which model answers (global or this clinic's personalised) and why")


class ReloadResult(BaseModel):
    swapped: bool = Field(description="the model versions changed")
    previous: dict[str, ModelRef]
    current: dict[str, ModelRef]


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=80, examples=["Dr Wang"])
    role: Role


class OutcomePublic(BaseModel):
    outcome_id: str
    decision_id: str
    recorded_at: UTCDateTime
    recorded_by: str
    labels: dict[str, str] = Field(description="label name -> class, e.g. {'referred_up': '1'}")
    note: str | None = None


class DecisionPublic(BaseModel):
    decision_id: str
    encounter_id: str
    decided_at: UTCDateTime
    recorded_by: str
    inputs: dict[str, Any]
    models: dict[str, ModelRef]
    referral_risk: float
    recommended_tier: str
    triage_level: str
    decision: Literal["treat_here", "refer"]
    referred_tier: Literal["county", "tertiary"] | None = None
    note: str | None = None
    outcomes: list[OutcomePublic] = Field(default_factory=list)


class FormOption(BaseModel):
    value: str
    display: Text


class FormField(BaseModel):
    name: str
    kind: FeatureKind
    required: bool
    display: Text
    unit: str | None = None
    description: str | None = None
    min: float | None = None
    max: float | None = None
    options: list[FormOption] | None = None


class FormSchema(BaseModel):
    """Everything the workstation page needs to build its form and label its answers."""

    task: str
    languages: list[str] = ["zh", "en"]
    features: list[FormField]
    tiers: dict[str, Text] = Field(default_factory=lambda: dict(TIERS))
    disclaimer: Text = Field(default_factory=lambda: dict(DISCLAIMER))


def form_schema(spec: TaskSpec) -> FormSchema:
    fields = []
    for f in spec.features:
        options = None
        if f.kind is FeatureKind.CATEGORICAL:
            options = [FormOption(value=v, display=f.value_display.get(v) or {"en": v}) for v in f.values or []]
        fields.append(FormField(name=f.name, kind=f.kind, required=f.required, display=f.display or {"en": f.name},
                                unit=f.unit, description=f.description, min=f.min, max=f.max, options=options))
    return FormSchema(task=spec.name, features=fields)
