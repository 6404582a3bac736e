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

import base64
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from federation.errors import AuditTamperedError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; appends there are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["ANCHOR_PATH", "GENESIS", "Anchor", "AnchorRequest", "AuditLog", "AuditTamperedError", "anchor_message",
           "chain_entry", "check_extension", "check_chain", "entry_line", "parse_line", "verify_anchor"]

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


# -- The same chaining rules for a log kept elsewhere (the coordinator service keeps its lines in its
# database) and the key holder's countersignature of a log's head ("anchor"). -----------------------

ANCHOR_PATH = "/v1/anchor"
_ANCHOR_DOMAIN = b"fenji-audit-anchor-v1\n"


def chain_entry(last: dict[str, Any] | None, *, actor: str, action: str, details: dict[str, Any],
                at: str | None = None) -> dict[str, Any]:
    """The entry that follows ``last`` (``None``: the first), hashed exactly as ``AuditLog.append`` does."""
    entry = {
        "seq": last["seq"] + 1 if last else 1,
        "at": at or datetime.now(timezone.utc).isoformat(),
        "actor": actor,
        "action": action,
        "details": details,
        "prev": last["hash"] if last else GENESIS,
    }
    entry["hash"] = _digest(entry)
    return entry


def entry_line(entry: dict[str, Any]) -> str:
    """An entry as the one line (newline included) a log stores."""
    return json.dumps(entry, ensure_ascii=False, default=str) + "\n"


def parse_line(line: str, n: int, where: str) -> dict[str, Any]:
    """Entry ``n`` of a log from its stored line; a line without its newline is a torn write.

    Raises
    ------
    AuditTamperedError
        If the line is torn, or not a JSON object.
    """
    if not line.endswith("\n"):
        raise AuditTamperedError(f"audit log {where} has a torn line at entry {n} (its write was cut off)")
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise AuditTamperedError(f"audit log {where} is broken at entry {n}: not a JSON line") from exc
    if not isinstance(entry, dict):
        raise AuditTamperedError(f"audit log {where} is broken at entry {n}: not a JSON object")
    return entry


def check_chain(entries: list[dict[str, Any]], where: str) -> int:
    """Check ``entries`` form one chain from the genesis (``AuditLog.verify``'s rules); return their number.

    Raises
    ------
    AuditTamperedError
        Naming the first entry whose number, link or hash is wrong.
    """
    prev = GENESIS
    for i, entry in enumerate(entries, start=1):
        if entry.get("seq") != i or entry.get("prev") != prev or entry.get("hash") != _digest(entry):
            raise AuditTamperedError(f"audit log {where} is broken at entry {i}")
        prev = entry["hash"]
    return len(entries)


class _Head(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=0, le=2**53, description="Number of entries the head covers (0: the empty log).")
    head: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the last entry (genesis: 64 zeros).")


class AnchorRequest(_Head):
    """A log's head that its keeper asks the key holder to countersign, with the entries since the head
    the key holder anchored last (all of them, the first time): the key holder signs only a head that
    extends its last one, so a rewritten log cannot be countersigned afresh."""

    entries: list[str] = Field(default_factory=list, max_length=10_000,
                               description="The stored lines of the entries after the last anchored one, in order.")


class Anchor(_Head):
    """The key holder's countersignature of a caller's log head, recorded in the key holder's ledger."""

    caller: str = Field(min_length=1, max_length=200, description="Whose log (the token's name).")
    keyholder: str = Field(description="Fingerprint of the key holder's verification key.")
    signed_at: str
    signature: str = Field(description="Ed25519 over anchor_message(caller, seq, head, signed_at) (base64).")


def check_extension(seq: int, head: str, lines: list[str], *, after: int = 0, after_head: str = GENESIS) -> None:
    """Check that ``lines`` are entries ``after + 1`` .. ``seq`` chained from ``after_head``, ending in ``head``.

    Raises
    ------
    AuditTamperedError
        If they are not (another count, a broken link or hash, another head).
    """
    if seq < after or len(lines) != seq - after:
        raise AuditTamperedError(f"entries {after + 1}-{seq} were asked to be anchored with {len(lines)} line(s)")
    prev = after_head
    for n, line in enumerate(lines, start=after + 1):
        entry = parse_line(line, n, "(to anchor)")
        if entry.get("seq") != n or entry.get("prev") != prev or entry.get("hash") != _digest(entry):
            raise AuditTamperedError(f"entry {n} does not extend the anchored chain (seq, link or hash)")
        prev = entry["hash"]
    if prev != head:
        raise AuditTamperedError(f"the entries do not end in the head given for entry {seq}")


def anchor_message(caller: str, seq: int, head: str, signed_at: str) -> bytes:
    """What the key holder signs for an anchor: domain, caller, position, head and time, one per line."""
    return _ANCHOR_DOMAIN + f"{caller}\n{seq}\n{head}\n{signed_at}".encode()


def verify_anchor(anchor: Anchor, verify_key: bytes) -> bool:
    """Whether ``anchor`` carries the key holder's valid signature (``verify_key``: Ed25519, raw)."""
    try:
        Ed25519PublicKey.from_public_bytes(verify_key).verify(
            base64.b64decode(anchor.signature),
            anchor_message(anchor.caller, anchor.seq, anchor.head, anchor.signed_at))
    except (InvalidSignature, ValueError):
        return False
    return True
