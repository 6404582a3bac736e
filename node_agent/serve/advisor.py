"""The advisor the scoring API serves, and the holder that swaps it without dropping a request.

A request reads ``holder.current`` once and uses that object until it answers, so a swap in the
middle of a request never mixes two model versions in one answer; in-flight requests finish on the
advisor they started with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from models.assessment import Assessment, ModelRef
from models.spec import TaskSpec
from node_agent.serve.errors import IncompatibleAdvisor

__all__ = ["AdvisorHolder", "AdvisorProvider", "Scorer", "features_read"]


@runtime_checkable
class Scorer(Protocol):
    """What the scoring API needs from an advisor: ``models.advisor.Advisor`` is the real one (tests
    also serve a fake)."""

    spec: TaskSpec
    models: dict[str, ModelRef]

    def assess(self, records: list[dict[str, object]]) -> list[Assessment]:
        """One assessment per record; a record maps every feature name to its value, None = not recorded."""
        ...

    def model_card(self, task: str, lang: str = "en") -> str:
        """The markdown model card of the model version that answers ``task``, in ``lang`` if it has one."""
        ...


def features_read(advisor: Scorer) -> dict[str, list[str]]:
    """Task -> the input features its served model reads (a ``*_text`` model reads the complaint text,
    the others do not). An advisor that does not say per task (a test double) reads all of ``spec``."""
    tasks = getattr(advisor, "tasks", None)
    if isinstance(tasks, Mapping) and all(hasattr(m, "spec") for m in tasks.values()):
        return {task: list(model.spec.feature_names) for task, model in tasks.items()}
    return {task: list(advisor.spec.feature_names) for task in advisor.models}


AdvisorProvider = Callable[[], Scorer]
"""Returns the newest approved advisor (called by ``POST /api/v1/admin/reload``)."""


class AdvisorHolder:
    """Holds the advisor in use; ``swap`` replaces it atomically for every later request."""

    def __init__(self, advisor: Scorer) -> None:
        self._advisor = advisor
        self._lock = threading.Lock()

    @property
    def current(self) -> Scorer:
        return self._advisor

    def swap(self, new: Scorer) -> Scorer:
        """Serve ``new`` from now on and return the advisor it replaced.

        Raises
        ------
        IncompatibleAdvisor
            If ``new`` reads other input features than the advisor in use: the API's input schema is
            built from them when the app starts.
        """
        with self._lock:
            old = self._advisor
            if _feature_signature(new.spec) != _feature_signature(old.spec):
                raise IncompatibleAdvisor(
                    f"the new advisor reads other input features than the one in use ({old.spec.name}); "
                    "restart the node agent to change the input schema")
            self._advisor = new  # one reference assignment: a reader sees the old or the new, never a mix
            return old


def _feature_signature(spec: TaskSpec) -> list[dict]:
    return [f.model_dump(include={"name", "kind", "min", "max", "values", "required"}) for f in spec.features]
