"""A hash-chained, append-only audit log (JSON lines), kept by each party that audits: the
coordinator (``coordinator.audit``) and the key holder (its decryption ledger).

Each entry is one line ending in a newline and holds the SHA-256 of the previous entry; changing,
removing or reordering an entry breaks the chain, and ``verify`` says where. A last line without its
newline is a *torn tail* (a write that was cut off): ``verify`` reports it, and ``append`` refuses to
chain onto it rather than build on an entry nobody can check.

Appends take an exclusive ``flock`` on the file while they read the tail and write, and write the
whole line with one ``write`` followed by ``fsync``, so concurrent writers (the CLI, a deployment
ServerApp) neither interleave nor fork the chain.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from federation.errors import AuditTamperedError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; appends there are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["AuditLog", "AuditTamperedError"]

GENESIS = "0" * 64
_TAIL_CHUNK = 64 * 1024


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


class AuditLog:
    """The audit log at ``path`` (its folder is created on first use)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def _read(self) -> tuple[list[dict[str, Any]], int | None]:
        """Every complete entry, and the number of the torn entry after them (``None`` if none)."""
        if not self.path.exists():
            return [], None
        try:
            text = self.path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AuditTamperedError(f"cannot read the audit log {self.path}: {exc}") from exc
        *lines, tail = text.split("\n")
        entries: list[dict[str, Any]] = []
        for line in lines:
            if line.strip():
                entries.append(self._parse(line, len(entries) + 1))
        return entries, (len(entries) + 1 if tail else None)

    def _torn(self, n: int, doing: str) -> AuditTamperedError:
        return AuditTamperedError(
            f"audit log {self.path} has a torn tail at entry {n} (its last line was cut off, e.g. by a crash "
            f"mid-write){doing}: keep a copy of the file, check what the cut-off line recorded, then remove "
            f"that line (e.g. `head -n {n - 1} {self.path} > fixed && mv fixed {self.path}` if the log has "
            "no blank lines)")

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, in order.

        Raises
        ------
        AuditTamperedError
            If a line is not a JSON object or the last line is torn.
        """
        entries, torn = self._read()
        if torn is not None:
            raise self._torn(torn, "")
        return entries

    def _parse(self, line: str, n: int) -> dict[str, Any]:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AuditTamperedError(f"audit log {self.path} is broken at entry {n}: not a JSON line") from exc
        if not isinstance(entry, dict):
            raise AuditTamperedError(f"audit log {self.path} is broken at entry {n}: not a JSON object")
        return entry

    def head(self) -> str:
        """The hash of the last entry (the genesis hash for an empty log): publishing it lets others
        detect a later rewrite of everything up to it."""
        if not self.path.exists():
            return GENESIS
        with self.path.open("rb") as fh:
            last = self._last_entry(fh)
        return last["hash"] if last else GENESIS

    def check_appendable(self) -> None:
        """Raise ``AuditTamperedError`` now if ``append`` would refuse (run it before a long job)."""
        if self.path.exists():
            with self.path.open("rb") as fh:
                self._last_entry(fh)

    def _last_entry(self, fh: Any) -> dict[str, Any] | None:
        """The last complete entry of the open file, reading only its tail; ``None`` if empty."""
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return None
        data, start = b"", size
        # Read backwards until the chunk holds the newline before the last line (or the file's start).
        while start > 0 and data.rstrip(b"\n").count(b"\n") == 0:
            start = max(0, start - _TAIL_CHUNK)
            fh.seek(start)
            data = fh.read(size - start)
        if not data.endswith(b"\n"):
            fh.seek(0)
            n = sum(1 for line in fh.read().split(b"\n")[:-1] if line.strip()) + 1
            raise self._torn(n, "; refusing to append to it")
        lines = [line for line in data.split(b"\n") if line.strip()]
        if not lines:
            return None
        try:
            entry = self._parse(lines[-1].decode("utf-8"), -1)
        except (UnicodeDecodeError, AuditTamperedError) as exc:
            raise AuditTamperedError(f"audit log {self.path}: its last entry is not readable; refusing to append "
                                     "to it (run verify to see where it breaks)") from exc
        if not isinstance(entry.get("seq"), int) or not isinstance(entry.get("hash"), str):
            raise AuditTamperedError(f"audit log {self.path}: its last entry has no seq or hash; refusing to append")
        return entry

    def append(self, *, actor: str, action: str, **details: Any) -> dict[str, Any]:
        """Chain one entry onto the log and return it (written and fsynced when this returns).

        Raises
        ------
        AuditTamperedError
            If the log's last line is torn or unreadable (nothing is written then).
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = self.path.open("a+b")
        except OSError as exc:
            raise AuditTamperedError(f"cannot open the audit log {self.path}: {exc}") from exc
        with fh:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file is closed
            last = self._last_entry(fh)
            entry = {
                "seq": last["seq"] + 1 if last else 1,
                "at": datetime.now(timezone.utc).isoformat(),
                "actor": actor,
                "action": action,
                "details": details,
                "prev": last["hash"] if last else GENESIS,
            }
            entry["hash"] = _digest(entry)
            line = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode("utf-8")
            # One write of the whole line (O_APPEND): a crash leaves a torn tail, never a spliced line.
            try:
                written = os.write(fh.fileno(), line)
                os.fsync(fh.fileno())
            except OSError as exc:
                raise AuditTamperedError(f"cannot write the audit log {self.path}: {exc}") from exc
            if written != len(line):
                raise self._torn(entry["seq"], f" (only {written} of {len(line)} bytes were written)")
        return entry

    def verify(self) -> int:
        """Check the whole chain; return the number of entries, or raise ``AuditTamperedError``
        naming the first broken entry (or the torn tail)."""
        prev = GENESIS
        entries, torn = self._read()
        for i, entry in enumerate(entries, start=1):
            if entry.get("seq") != i or entry.get("prev") != prev or entry.get("hash") != _digest(entry):
                raise AuditTamperedError(f"audit log {self.path} is broken at entry {i}")
            prev = entry["hash"]
        if torn is not None:
            raise self._torn(torn, "")
        return len(entries)
