"""Single-patient requests that arrive together are scored together.

A clinic's doctors score one patient at a time, but under load many of those requests are in the
server at once. Scoring them in one ``Scorer.assess`` call costs far less than one by one (the
built-in models score one patient in about 0.4 ms and 32 together in about 2 ms: their NumPy
operations cost the same for one row as for many), so ``MicroBatcher`` collects the
requests whose handlers ran in the same turn of the event loop and scores them in one call, in
the loop's next turn. There is no waiting window: a lone request is scored at once, so batching
adds no latency when the clinic is quiet (the approach of Ray Serve's ``@serve.batch`` and
Triton's dynamic batcher, with a zero wait).

Scoring runs in the event loop, between requests: at these costs a hop to a worker thread costs more
than it saves under the GIL. (``/score/batch``, whose calls are larger, runs in the thread pool.)

Each request keeps the advisor it started with: requests are grouped by advisor, so a model switch
in the middle never mixes two versions in one answer. If the advisor fails on a group, each patient
of it is retried alone, so one patient the advisor cannot score does not fail the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from node_agent.serve.advisor import Scorer

__all__ = ["MicroBatcher"]

Result = TypeVar("Result")
Records = Sequence[Mapping[str, Any]]


class MicroBatcher(Generic[Result]):
    """Collects ``(advisor, record)`` submissions and answers them with ``score(advisor, records)``.

    Parameters
    ----------
    score
        Scores records with an advisor, one result per record, in order; it may raise.
    max_batch
        Most records per ``score`` call; more waiting records go to the next call.
    """

    def __init__(self, score: Callable[[Scorer, Records], list[Result]], *, max_batch: int = 64) -> None:
        self._score, self.max_batch = score, max_batch
        self._pending: list[tuple[Scorer, Mapping[str, Any], asyncio.Future[Result]]] = []
        self._scheduled = False
        self.calls = 0  # ``score`` calls made, for monitoring and tests
        self.records = 0

    async def submit(self, advisor: Scorer, record: Mapping[str, Any]) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((advisor, record, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
        self._scheduled = bool(self._pending)
        if self._scheduled:
            asyncio.get_running_loop().call_soon(self._flush)
        groups: dict[int, list[tuple[Scorer, Mapping[str, Any], asyncio.Future[Result]]]] = {}
        for item in pending:
            if not item[2].done():  # a cancelled request (client gone) is not scored
                groups.setdefault(id(item[0]), []).append(item)
        for group in groups.values():
            self._answer(group)

    def _answer(self, group: list[tuple[Scorer, Mapping[str, Any], asyncio.Future[Result]]]) -> None:
        advisor = group[0][0]
        try:
            results = self._call(advisor, [record for _, record, _ in group])
        except Exception as exc:  # noqa: BLE001 - handed to the request(s) it belongs to
            if len(group) == 1:
                group[0][2].set_exception(exc)
                return
            for item in group:  # find the patient(s) the advisor cannot score; the others get answers
                self._answer([item])
            return
        for (_, _, future), result in zip(group, results):
            if not future.done():
                future.set_result(result)

    def _call(self, advisor: Scorer, records: list[Mapping[str, Any]]) -> list[Result]:
        self.calls += 1
        self.records += len(records)
        return self._score(advisor, records)
