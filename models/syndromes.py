"""The syndrome table: which chief complaints (with or without fever) count as which syndrome.

One versioned table (``TABLE_VERSION``) for the doctor's infectious-risk flag at the clinic
(``node_agent.serve.syndromes``) and for syndromic surveillance (``federation.surveillance``: the
sites count the same syndromes the doctor was shown). A syndrome matches the structured complaint
category, or words in a free-text complaint when the visit has one (``TEXT_FIELDS``), with a measured
temperature at or above ``FEVER_AT_LEAST`` when it needs fever. A visit counts in at most one febrile
syndrome (the specific ones are listed before "fever without a known source") and in any of the
others. Changing a row is a new ``TABLE_VERSION``: a surveillance query names the version it counts,
and a site with another table refuses it rather than count other syndromes under the same names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FEVER_AT_LEAST", "SYNDROMES", "TABLE_VERSION", "TEXT_FIELDS", "Match", "Syndrome", "fever_of",
           "match_syndromes", "syndrome_codes"]

TABLE_VERSION = "2026.1"
FEVER_AT_LEAST = 37.5  # °C, axillary: the fever clinics' (发热门诊) screening line
TEXT_FIELDS = ("complaint_text",)  # free-text chief complaint, if the task has one


@dataclass(frozen=True)
class Syndrome:
    """One row of the table: a complaint pattern, with or without fever."""

    code: str
    title: dict[str, str]
    complaints: frozenset[str] = frozenset()  # values of the categorical ``complaint``
    words: tuple[str, ...] = ()  # lower-case substrings of a free-text complaint (zh and en)
    needs_fever: bool = True


SYNDROMES: tuple[Syndrome, ...] = (
    Syndrome("febrile_respiratory", {"zh": "发热伴呼吸道症状", "en": "fever with respiratory symptoms"},
             frozenset({"dyspnoea"}), ("咳嗽", "咳痰", "咽痛", "气促", "气短", "呼吸困难", "cough", "sore throat",
                                       "short of breath", "shortness of breath", "breathless")),
    Syndrome("febrile_gastrointestinal", {"zh": "发热伴消化道症状", "en": "fever with gastrointestinal symptoms"},
             frozenset({"abdominal_pain"}), ("腹痛", "呕吐", "vomit", "abdominal pain")),
    Syndrome("acute_diarrhoea", {"zh": "急性腹泻", "en": "acute diarrhoea"},
             words=("腹泻", "拉肚子", "水样便", "稀便", "diarrhoea", "diarrhea", "loose stool"), needs_fever=False),
    Syndrome("fever_rash", {"zh": "发热伴皮疹", "en": "fever with rash"},
             words=("皮疹", "出疹", "疹子", "疱疹", "rash", "spots")),
    Syndrome("undifferentiated_fever", {"zh": "发热待查", "en": "fever without a known source"},
             frozenset({"fever"}), ("发热", "发烧", "fever")),
)


@dataclass(frozen=True)
class Match:
    """A syndrome one visit matches, and why: the words that matched (none: its complaint category)."""

    syndrome: Syndrome
    words: tuple[str, ...]
    temperature: float | None


def syndrome_codes() -> list[str]:
    """The table's codes, in its order."""
    return [s.code for s in SYNDROMES]


def fever_of(inputs: Mapping[str, Any]) -> float | None:
    """The measured temperature, if there is one (an unrecorded temperature is never fever)."""
    value = inputs.get("temperature")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):  # NaN: not measured
        return None
    return float(value)


def _words(syndrome: Syndrome, inputs: Mapping[str, Any]) -> tuple[str, ...]:
    texts = " ".join(str(inputs[f]).lower() for f in TEXT_FIELDS if isinstance(inputs.get(f), str))
    return tuple(w for w in syndrome.words if w in texts)


def match_syndromes(inputs: Mapping[str, Any]) -> list[Match]:
    """The syndromes of ``SYNDROMES`` one visit matches, in the table's order."""
    temperature = fever_of(inputs)
    febrile = temperature is not None and temperature >= FEVER_AT_LEAST
    matches, fever_named = [], False
    for syndrome in SYNDROMES:
        # One febrile syndrome is enough: the table lists the specific ones before "fever without a source".
        if syndrome.needs_fever and (not febrile or fever_named):
            continue
        words = _words(syndrome, inputs)
        if not (inputs.get("complaint") in syndrome.complaints or words):
            continue
        matches.append(Match(syndrome, words, temperature))
        fever_named = fever_named or syndrome.needs_fever
    return matches
