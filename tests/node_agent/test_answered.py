"""A site answers each query (key holder, run, phase, round) once: a second, different reply to the
same query would let whoever holds both cancel its secret tag offset out."""

from __future__ import annotations

import json
import multiprocessing
import re
from dataclasses import replace
from pathlib import Path

import pytest

from federation.tags import QueryLabel
from node_agent.answered import ANSWERED_FILE, claim_query
from node_agent.errors import EgressViolation

KEYHOLDER = "3f2a9c0d1e5b7a68"
LABEL = QueryLabel(run_id="run-1", phase="train", round=2, task="referral_risk")


def test_a_query_is_answered_once(tmp_path):
    claim_query(tmp_path, KEYHOLDER, LABEL)
    with pytest.raises(EgressViolation, match=re.escape("already answered query run-1|train|2")):
        claim_query(tmp_path, KEYHOLDER, LABEL)
    # Whatever else the asker changes, (key holder, run, phase, round) is the same query: the
    # tags' offset would differ with the task or the DP claim, but one reply per round is the rule.
    for same in (replace(LABEL, task="another_task"), replace(LABEL, dp_epsilon=2.0)):
        with pytest.raises(EgressViolation):
            claim_query(tmp_path, KEYHOLDER, same)


def test_another_round_phase_run_or_key_holder_is_another_query(tmp_path):
    claim_query(tmp_path, KEYHOLDER, LABEL)
    claim_query(tmp_path, KEYHOLDER, replace(LABEL, round=3))
    claim_query(tmp_path, KEYHOLDER, replace(LABEL, phase="calibrate"))
    claim_query(tmp_path, KEYHOLDER, replace(LABEL, run_id="run-2"))
    claim_query(tmp_path, "0000aaaabbbbcccc", LABEL)
    lines = (tmp_path / ANSWERED_FILE).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5 and all(json.loads(line)["query"] for line in lines)
    with pytest.raises(EgressViolation):
        claim_query(tmp_path, KEYHOLDER, replace(LABEL, round=3))


def test_the_record_survives_a_restart_of_the_node(tmp_path):
    claim_query(tmp_path, KEYHOLDER, LABEL)
    # A new process reads the same file: nothing is kept in memory only.
    assert KEYHOLDER in (tmp_path / ANSWERED_FILE).read_text(encoding="utf-8")
    with pytest.raises(EgressViolation):
        claim_query(Path(str(tmp_path)), KEYHOLDER, LABEL)


def _claim_when_all_are_ready(site_dir: str, start, results, rounds: int) -> None:
    """Runs in a spawned process: once all contenders are ready, claim rounds 0..rounds-1 of ``LABEL``
    in order; report the rounds this process answered."""
    start.wait(timeout=120)
    answered = []
    for round_ in range(rounds):
        try:
            claim_query(Path(site_dir), KEYHOLDER, replace(LABEL, round=round_))
        except EgressViolation:
            continue
        answered.append(round_)
    results.put(answered)


def test_two_processes_claiming_the_same_query_one_wins(tmp_path):
    # Simulated nodes are processes. Two of them race for the same query, then for the next, and so
    # on: one query would seldom show a missing lock (the window between reading and writing is
    # short); over 400, unlocked claims collide a score of times.
    rounds = 400
    spawn = multiprocessing.get_context("spawn")
    start, results = spawn.Barrier(2), spawn.Queue()
    processes = [spawn.Process(target=_claim_when_all_are_ready, args=(str(tmp_path), start, results, rounds))
                 for _ in range(2)]
    for process in processes:
        process.start()
    first, second = (results.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert set(first) & set(second) == set()  # no query answered twice
    assert sorted(first + second) == list(range(rounds))  # and each answered once
    lines = (tmp_path / ANSWERED_FILE).read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(line)["query"] for line in lines) == sorted(
        f"{KEYHOLDER}|{replace(LABEL, round=r).once_key}" for r in range(rounds))
