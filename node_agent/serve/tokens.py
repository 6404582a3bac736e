"""Access tokens of one site, stored hashed in ``site_dir/access_tokens.json``.

A token is 32 random bytes, shown once when it is created; the file keeps only its SHA-256. The
tokens live in a small file rather than in ``site.duckdb`` so that checking a token never opens the
DuckDB file (which local training opens read-only from another process) and so that
``fenji node token create`` works while the server runs: the server rereads the file when it changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field

from node_agent.serve.access import Role
from node_agent.serve.errors import LastSiteAdmin, NotFound

try:
    import fcntl
except ImportError:  # Windows: the thread lock still serialises the server's own writes
    fcntl = None  # type: ignore[assignment]

__all__ = ["TOKEN_FILE", "IssuedToken", "TokenInfo", "TokenStore"]

TOKEN_FILE = "access_tokens.json"
TOKEN_PREFIX = "fj_"


class TokenInfo(BaseModel):
    """A token as anyone may see it: never the token itself."""

    token_id: str = Field(description="public id, used to revoke the token")
    name: str = Field(description="who holds it, e.g. 'Dr Wang'")
    role: Role
    created_at: datetime


class IssuedToken(BaseModel):
    """A new token: ``token`` is shown this once and stored nowhere."""

    info: TokenInfo
    token: str


class _Stored(TokenInfo):
    sha256: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """Create, list, revoke and check the site's tokens (safe across threads and processes)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cache: tuple[tuple[int, int, int], list[tuple[_Stored, TokenInfo]]] | None = None

    @classmethod
    def for_site(cls, site_dir: Path | str) -> TokenStore:
        return cls(Path(site_dir) / TOKEN_FILE)

    def create(self, *, role: Role | str, name: str) -> IssuedToken:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        stored = _Stored(token_id=secrets.token_hex(6), name=name.strip() or "unnamed", role=Role(role),
                         created_at=datetime.now(timezone.utc).replace(microsecond=0), sha256=_digest(token))
        with self._editing() as tokens:
            tokens.append(stored)
        return IssuedToken(info=TokenInfo(**stored.model_dump(exclude={"sha256"})), token=token)

    def list(self) -> list[TokenInfo]:
        return [TokenInfo(**t.model_dump(exclude={"sha256"})) for t in self._read()]

    def revoke(self, token_id: str, *, keep_last_admin: bool = True) -> TokenInfo:
        """Revoke a token; by default refuse to revoke the last site-admin token (the API would lock out)."""
        with self._editing() as tokens:
            found = [t for t in tokens if t.token_id == token_id]
            if not found:
                raise NotFound(f"no token with id {token_id!r}")
            admins = [t for t in tokens if t.role is Role.SITE_ADMIN]
            if keep_last_admin and found[0].role is Role.SITE_ADMIN and len(admins) == 1:
                raise LastSiteAdmin("this is the site's last site-admin token; create another one first")
            tokens.remove(found[0])
        return TokenInfo(**found[0].model_dump(exclude={"sha256"}))

    def authenticate(self, token: str) -> TokenInfo | None:
        """The token's holder, or None. Compares every stored digest in constant time."""
        digest, match = _digest(token), None
        for stored, info in self._cached():
            if hmac.compare_digest(stored.sha256, digest):
                match = info
        return match

    def _read(self) -> list[_Stored]:
        return [stored for stored, _ in self._cached()]

    def _cached(self) -> list[tuple[_Stored, TokenInfo]]:
        """The file's tokens, reread only when the file changed (a token created or revoked elsewhere)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cache = self._cache
        if cache is None or cache[0] != key:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            stored = [_Stored.model_validate(t) for t in data.get("tokens", [])]
            cache = (key, [(s, TokenInfo(**s.model_dump(exclude={"sha256"}))) for s in stored])
            self._cache = cache
        return cache[1]

    @contextlib.contextmanager
    def _editing(self) -> Iterator[list[_Stored]]:
        """Read-modify-write under a thread lock and an exclusive file lock; replace the file atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with self._lock, open(lock_path, "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            self._cache = None
            tokens = self._read()
            yield tokens
            tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump({"tokens": [t.model_dump(mode="json") for t in tokens]}, out, ensure_ascii=False, indent=1)
            os.replace(tmp, self.path)
            self._cache = None
