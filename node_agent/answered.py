"""The queries this site has answered with a ciphertext: each one once.

A site's tags for one query (``federation.tags``) use one secret offset; two different replies to
the same query would let whoever holds both cancel that offset out. So a node answers each
(key holder, run, phase, round) once and refuses a repeat, whoever asks. The record is a small
append-only file in the site folder, written under an exclusive lock (simulated nodes are processes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from federation.tags import QueryLabel
from node_agent.errors import EgressViolation

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["ANSWERED_FILE", "claim_query"]

ANSWERED_FILE = "answered-queries.jsonl"


def claim_query(site_dir: Path, keyholder: str, label: QueryLabel) -> None:
    """Record that this site answers ``label`` now.

    Raises
    ------
    EgressViolation
        If it has answered the same query before (nothing is sent then).
    """
    key = f"{keyholder}|{label.once_key}"
    path = Path(site_dir) / ANSWERED_FILE
    with path.open("a+", encoding="utf-8") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        for line in fh:
            if line.strip() and json.loads(line).get("query") == key:
                raise EgressViolation(f"this site already answered query {label.once_key}: a second, different "
                                      "reply to one query would expose its tag offset; refused")
        fh.write(json.dumps({"query": key, "task": label.task}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
