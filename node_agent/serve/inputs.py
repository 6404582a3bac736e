"""Request models generated from the task specs: what the API accepts, checked field by field.

The patient model is built from the advisor's ``TaskSpec``: numbers within the spec's range (never
NaN or infinite), categories from the spec's values, booleans; ``required`` features must be given,
every other one may be absent or null, which means *not recorded* and is scored as missing. Unknown
fields are errors, and nothing is coerced (no "72" for 72, no 1 for true), so a wrong type is a 422
naming the field rather than a silent guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from models.assessment import ModelRef, Tier
from models.spec import FeatureKind, FeatureSpec, LabelSpec, TaskSpec

__all__ = ["CardQuery", "DecisionBase", "DecisionQuery", "Inputs", "OutcomeBase", "build_inputs", "example_patient",
           "patient_model"]

# A plausible first visit, for the OpenAPI examples only (never used to fill a missing value).
_EXAMPLE = {"age": 67, "sex": "M", "sbp": 152, "dbp": 91, "heart_rate": 108, "resp_rate": 22,
            "temperature": 37.4, "spo2": 93, "avpu": "A", "pain_score": 6, "complaint": "chest_pain",
            "arrival": "walk_in", "hx_hypertension": True, "hx_diabetes": False, "hx_copd": False,
            "hx_heart_disease": True}


MAX_TEXT_CHARS = 2000  # as ingest (node_agent.ingest.MAX_TEXT)


def _example_value(feature: FeatureSpec) -> Any:
    if feature.name in _EXAMPLE:
        return _EXAMPLE[feature.name]
    if feature.kind is FeatureKind.CATEGORICAL:
        return feature.values[0]
    if feature.kind is FeatureKind.BOOLEAN:
        return False
    if feature.kind is FeatureKind.TEXT:
        return "发热两天，咳嗽"
    low, high = feature.min if feature.min is not None else 0.0, feature.max if feature.max is not None else 1.0
    return (low + high) / 2


def example_patient(spec: TaskSpec, *, complete: bool = True) -> dict[str, Any]:
    """An example request body; with ``complete=False`` only the required features."""
    return {f.name: _example_value(f) for f in spec.features if complete or f.required}


def _field(feature: FeatureSpec) -> tuple[Any, Any]:
    title = feature.display.get("en") or feature.name
    parts = [feature.description or title]
    if feature.unit:
        parts.append(f"unit: {feature.unit}")
    if feature.kind is FeatureKind.NUMERIC:
        kind: Any = Annotated[float, Field(ge=feature.min, le=feature.max, allow_inf_nan=False)]
        if feature.min is not None and feature.max is not None:
            parts.append(f"range {feature.min:g}–{feature.max:g}")
    elif feature.kind is FeatureKind.CATEGORICAL:
        kind = Literal[tuple(feature.values)]  # type: ignore[valid-type]
    elif feature.kind is FeatureKind.TEXT:  # the complaint as written (models.text hashes it; never sent)
        kind = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
        parts.append(f"free text, at most {MAX_TEXT_CHARS} characters")
    else:
        kind = bool
    description = "; ".join(parts) + (". Required." if feature.required else ". Absent or null: not recorded.")
    if feature.required:
        return kind, Field(..., title=title, description=description)
    return kind | None, Field(None, title=title, description=description)


def patient_model(spec: TaskSpec) -> type[BaseModel]:
    """The pydantic model of one patient's first-visit record, from the spec's features."""
    return create_model(
        "Patient",
        __config__=ConfigDict(extra="forbid", strict=True, json_schema_extra={
            "examples": [example_patient(spec), example_patient(spec, complete=False)]}),
        __doc__="One patient's first-visit record. A feature left out or null is scored as not recorded.",
        **{f.name: _field(f) for f in spec.features},
    )


class AssessmentSummary(BaseModel):
    """What the doctor was shown: enough to audit the decision against the model that advised it."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelRef] = Field(min_length=1, description="task -> model version, as in the Assessment")
    referral_risk: float = Field(ge=0, le=1, allow_inf_nan=False)
    tier: Tier = Field(description="the recommended tier")
    triage_level: str = Field(max_length=8)


class DecisionBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    encounter_id: str = Field(min_length=1, max_length=64, pattern=r"^[\w.:/#-]+$",
                              description="the clinic's reference for this visit (门诊号)")
    assessment: AssessmentSummary
    decision: Literal["treat_here", "refer"]
    referred_tier: Literal["county", "tertiary"] | None = Field(
        None, validate_default=True, description="where the patient is referred; required iff decision is 'refer'")
    note: str | None = Field(None, max_length=2000)

    @field_validator("referred_tier")
    @classmethod
    def _tier_iff_refer(cls, tier: str | None, info: ValidationInfo) -> str | None:
        decision = info.data.get("decision")
        if decision == "refer" and tier is None:
            raise PydanticCustomError("referred_tier_required", "a referral needs referred_tier: county or tertiary")
        if decision == "treat_here" and tier is not None:
            raise PydanticCustomError("referred_tier_forbidden", "treat_here takes no referred_tier")
        return tier


def _some_label_required(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    labels = [name for name in cls.model_fields if name not in ("decision_id", "note")]
    if labels:  # documents the validator below: at least one outcome
        schema["anyOf"] = [{"required": [name]} for name in labels]


class OutcomeBase(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_some_label_required)

    decision_id: str = Field(min_length=1, max_length=64, description="as returned by POST /api/v1/decisions")
    note: str | None = Field(None, max_length=2000)

    def labels(self) -> dict[str, str]:
        base = set(OutcomeBase.model_fields)
        return {k: v for k, v in self.model_dump().items() if k not in base and v is not None}

    @model_validator(mode="after")
    def _some_outcome(self) -> OutcomeBase:
        if not self.labels():
            names = ", ".join(k for k in type(self).model_fields if k not in OutcomeBase.model_fields)
            raise PydanticCustomError("outcome_empty", "give at least one outcome: {names}", {"names": names})
        return self


class DecisionQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(100, ge=1, le=1000, description="at most this many, latest first")
    encounter_id: str | None = Field(None, max_length=64, description="only this visit")


class CardQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, max_length=64, description="the version the caller was shown")
    lang: Literal["zh-CN", "en"] = Field("zh-CN", description="the card's language (a version registered before "
                                         "cards were written in Chinese has only its English card)")


@dataclass(frozen=True)
class Inputs:
    """The request models of one app, generated once when it starts."""

    patient: type[BaseModel]
    batch: type[BaseModel]
    decision: type[DecisionBase]
    outcome: type[OutcomeBase]
    labels: dict[str, LabelSpec]


def build_inputs(spec: TaskSpec, labels: list[LabelSpec], *, max_batch: int) -> Inputs:
    """Request models for ``spec``'s features and the outcome ``labels`` (e.g. referred_up, triage_level)."""
    patient = patient_model(spec)
    batch = create_model(
        "PatientBatch", __config__=ConfigDict(extra="forbid"),
        __doc__=f"Up to {max_batch} patients, scored in one call; answers come in the same order.",
        patients=(list[patient], Field(min_length=1, max_length=max_batch)),  # type: ignore[valid-type]
    )
    decision = create_model("DecisionCreate", __base__=DecisionBase,
                            inputs=(patient, Field(description="the inputs that were scored")))
    by_name = {label.name: label for label in labels}
    outcome = create_model("OutcomeCreate", __base__=OutcomeBase, **{  # absent = not known (yet); never null
        name: (Literal[tuple(label.classes)],  # type: ignore[valid-type]
               Field(None, description=f"{label.description or name}; one of {', '.join(label.classes)}"))
        for name, label in by_name.items()})
    return Inputs(patient=patient, batch=batch, decision=decision, outcome=outcome, labels=by_name)
