"""``MicroBatcher``: submissions made in the same event-loop turn are scored together, each caller gets
its own answer, advisors are never mixed, one failing patient fails only its own caller; and over
HTTP, single-patient requests sent at once get the same answers as when sent alone."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from node_agent.serve.batching import MicroBatcher
from tests.node_agent.serve.test_score import PATIENT

TIMEOUT = 5.0  # seconds: no submission may wait on a window, so anything near this is a hang


class Named:
    """A stand-in advisor: the batcher only hands it to ``score``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Named({self.name!r})"


class Recorder:
    """A ``score`` callable that keeps (advisor, records) of every call and answers ``i * 10`` (plus the
    advisor's name, so an answer shows which advisor produced it); raises on a record marked poison."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, list[dict]]] = []

    def __call__(self, advisor, records):
        self.calls.append((advisor, list(records)))
        if any(r.get("poison") for r in records):
            raise ValueError("cannot score a poison record")
        return [(getattr(advisor, "name", None), r["i"] * 10) for r in records]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def test_submissions_of_one_turn_are_scored_together_each_getting_its_own_answer():
    score, advisor = Recorder(), Named("a")
    batcher = MicroBatcher(score)

    async def main():
        return await asyncio.gather(*(batcher.submit(advisor, {"i": i}) for i in range(20)))

    results = run(main())
    assert results == [("a", i * 10) for i in range(20)]
    assert batcher.calls < 20
    assert batcher.calls == len(score.calls) == 1, score.calls  # all in one turn: one call, no wait
    assert batcher.records == 20
    assert sorted(r["i"] for r in score.calls[0][1]) == list(range(20))


def test_answers_follow_the_records_whatever_order_the_callers_submit_in():
    score, advisor = Recorder(), Named("a")
    batcher = MicroBatcher(score)
    order = [7, 3, 11, 0, 5, 9, 1]

    async def main():
        return await asyncio.gather(*(batcher.submit(advisor, {"i": i}) for i in order))

    assert run(main()) == [("a", i * 10) for i in order]


def test_a_lone_submission_is_answered_at_once():
    """No waiting window: a lone request is answered within a few turns of the event loop, not by a timer."""
    score, advisor = Recorder(), Named("a")
    batcher = MicroBatcher(score)

    async def main():
        task = asyncio.ensure_future(batcher.submit(advisor, {"i": 4}))
        turns = 0
        while not task.done() and turns < 5:
            await asyncio.sleep(0)  # one turn of the loop; no time passes for a timer to fire
            turns += 1
        return task.done() and task.result(), turns

    result, turns = run(main())
    assert result == ("a", 40) and turns <= 3
    assert batcher.calls == 1 and score.calls == [(advisor, [{"i": 4}])]


def test_successive_turns_are_answered_and_the_batcher_is_reusable():
    score, advisor = Recorder(), Named("a")
    batcher = MicroBatcher(score)

    async def main():
        first = await batcher.submit(advisor, {"i": 1})
        second = await asyncio.gather(*(batcher.submit(advisor, {"i": i}) for i in (2, 3)))
        third = await batcher.submit(advisor, {"i": 4})
        return first, second, third

    assert run(main()) == (("a", 10), [("a", 20), ("a", 30)], ("a", 40))
    assert [len(records) for _, records in score.calls] == [1, 2, 1]


def test_two_advisors_in_one_turn_are_never_scored_in_the_same_call():
    score = Recorder()
    old, new = Named("old"), Named("new")
    batcher = MicroBatcher(score)
    plan = [(old if i % 3 else new, i) for i in range(15)]  # interleaved

    async def main():
        return await asyncio.gather(*(batcher.submit(adv, {"i": i, "by": adv.name}) for adv, i in plan))

    results = run(main())
    assert results == [(adv.name, i * 10) for adv, i in plan]  # each answered by ITS advisor
    assert len(score.calls) == 2
    for advisor, records in score.calls:
        assert {r["by"] for r in records} == {advisor.name}, (advisor, records)
    scored = {advisor.name: sorted(r["i"] for r in records) for advisor, records in score.calls}
    assert scored == {"old": [i for adv, i in plan if adv is old], "new": [i for adv, i in plan if adv is new]}


def test_two_equal_but_distinct_advisors_are_kept_apart():
    """Grouping is by identity: two advisor objects are two versions even if they compare equal."""

    class Same(Named):
        def __eq__(self, other):
            return isinstance(other, Same)

        def __hash__(self):
            return 0

    score = Recorder()
    a, b = Same("a"), Same("b")
    batcher = MicroBatcher(score)

    async def main():
        return await asyncio.gather(*(batcher.submit(a if i % 2 else b, {"i": i}) for i in range(6)))

    assert run(main()) == [("a" if i % 2 else "b", i * 10) for i in range(6)]
    assert sorted((adv.name, len(records)) for adv, records in score.calls) == [("a", 3), ("b", 3)]


def test_a_poison_record_fails_only_its_own_caller():
    score, advisor = Recorder(), Named("a")
    batcher = MicroBatcher(score)
    records = [{"i": i, "poison": i == 3} for i in range(6)]

    async def main():
        return await asyncio.gather(*(batcher.submit(advisor, r) for r in records), return_exceptions=True)

    results = run(main())
    for i, result in enumerate(results):
        if i == 3:
            assert isinstance(result, ValueError) and "poison" in str(result)
        else:
            assert result == ("a", i * 10)
    # the group failed once, then each of its patients was tried alone
    assert batcher.calls == len(score.calls) == 1 + len(records)
    assert [len(r) for _, r in score.calls] == [6, 1, 1, 1, 1, 1, 1]


def test_a_poison_record_does_not_touch_the_other_advisors_group():
    score = Recorder()
    a, b = Named("a"), Named("b")
    batcher = MicroBatcher(score)

    async def main():
        return await asyncio.gather(
            batcher.submit(a, {"i": 1}), batcher.submit(a, {"i": 2, "poison": True}),
            batcher.submit(b, {"i": 3}), batcher.submit(b, {"i": 4}), return_exceptions=True)

    r1, r2, r3, r4 = run(main())
    assert (r1, r3, r4) == (("a", 10), ("b", 30), ("b", 40))
    assert isinstance(r2, ValueError)
    b_calls = [records for adv, records in score.calls if adv is b]
    assert b_calls == [[{"i": 3}, {"i": 4}]]  # b's group was scored once, together


def test_max_batch_is_honoured_and_everyone_is_answered():
    score, advisor = Recorder(), Named("a")
    batcher = MicroBatcher(score, max_batch=4)

    async def main():
        return await asyncio.gather(*(batcher.submit(advisor, {"i": i}) for i in range(10)))

    results = run(main())
    assert results == [("a", i * 10) for i in range(10)]
    sizes = [len(records) for _, records in score.calls]
    assert max(sizes) <= 4 and sum(sizes) == 10, sizes
    assert sizes == [4, 4, 2]
    assert sorted(r["i"] for _, records in score.calls for r in records) == list(range(10))


def test_a_cancelled_submission_is_not_scored_and_the_others_are_answered():
    score, advisor = Recorder(), Named("a")
    batcher = MicroBatcher(score)

    async def main():
        tasks = [asyncio.ensure_future(batcher.submit(advisor, {"i": i})) for i in range(4)]
        await asyncio.sleep(0)  # every task has submitted; the flush is queued for the next turn
        tasks[2].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(main())
    assert isinstance(results[2], asyncio.CancelledError)
    assert [results[i] for i in (0, 1, 3)] == [("a", 0), ("a", 10), ("a", 30)]
    assert [r["i"] for _, records in score.calls for r in records] == [0, 1, 3]


# -- over HTTP, against the real server -----------------------------------------------------------

N_CONCURRENT = 24


def _patients() -> list[dict]:
    patients = []
    for i in range(N_CONCURRENT):
        p = {**PATIENT, "age": 20 + 3 * i, "heart_rate": 55 + 5 * i, "spo2": 99 - (i % 9)}
        if i % 5 == 0:
            p.pop("spo2")  # some with a feature not recorded
        if i % 7 == 0:
            p["arrival"] = "ambulance"
        patients.append(p)
    return patients


def _key(answer: dict) -> tuple:
    return (answer["triage"]["level"], answer["tier"]["tier"], [d["code"] for d in answer["diagnoses"]],
            sorted(answer["not_recorded"]))


def test_concurrent_single_requests_get_the_answers_they_get_alone(served):
    patients = _patients()
    with served.client("doctor") as client:
        alone = []
        for p in patients:
            response = client.post("/api/v1/score", json=p)
            assert response.status_code == 200, response.text
            alone.append(response.json())
    calls_before = len(served.spy.calls)

    async def together():
        limits = httpx.Limits(max_connections=N_CONCURRENT, max_keepalive_connections=N_CONCURRENT)
        async with httpx.AsyncClient(base_url=served.base_url, headers=served.headers("doctor"), timeout=30,
                                     limits=limits) as client:
            return await asyncio.gather(*(client.post("/api/v1/score", json=p) for p in patients))

    responses = asyncio.run(together())
    assert [r.status_code for r in responses] == [200] * N_CONCURRENT, [r.text for r in responses if r.status_code != 200]
    for p, single, response in zip(patients, alone, responses):
        answer = response.json()
        assert _key(answer) == _key(single), p
        assert answer["referral_risk"]["probability"] == pytest.approx(single["referral_risk"]["probability"],
                                                                       rel=1e-9, abs=1e-12), p
        assert answer["triage"]["probabilities"] == pytest.approx(single["triage"]["probabilities"],
                                                                  rel=1e-9, abs=1e-12), p
        assert [d["probability"] for d in answer["diagnoses"]] == pytest.approx(
            [d["probability"] for d in single["diagnoses"]], rel=1e-9, abs=1e-12), p
        assert answer["models"] == single["models"]
    # every patient reached the advisor exactly once (no loss, no duplicate), whatever the grouping
    scored = [record for call in served.spy.calls[calls_before:] for record in call]
    assert len(scored) == N_CONCURRENT
    expected = sorted((p["age"], p["heart_rate"]) for p in patients)
    assert sorted((r["age"], r["heart_rate"]) for r in scored) == expected
