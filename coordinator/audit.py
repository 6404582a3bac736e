"""A hash-chained, append-only audit log (JSON lines).

Each entry holds the SHA-256 of the previous entry; changing, removing or reordering an entry
breaks the chain, and ``verify`` says where.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["AuditLog", "AuditTamperedError"]

GENESIS = "0" * 64


class AuditTamperedError(Exception):
    """The audit log's hash chain is broken."""


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


class AuditLog:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def append(self, *, actor: str, action: str, **details: Any) -> dict[str, Any]:
        entries = self.entries()
        entry = {
            "seq": len(entries) + 1,
            "at": datetime.now(timezone.utc).isoformat(),
            "actor": actor,
            "action": action,
            "details": details,
            "prev": entries[-1]["hash"] if entries else GENESIS,
        }
        entry["hash"] = _digest(entry)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
        return entry

    def verify(self) -> int:
        """Check the whole chain; return the number of entries, or raise ``AuditTamperedError``."""
        prev = GENESIS
        entries = self.entries()
        for i, entry in enumerate(entries, start=1):
            if entry.get("seq") != i or entry.get("prev") != prev or entry.get("hash") != _digest(entry):
                raise AuditTamperedError(f"audit log {self.path} is broken at entry {i}")
            prev = entry["hash"]
        return len(entries)
