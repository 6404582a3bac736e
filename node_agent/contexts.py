"""The key holder's public contexts at a site: received once per run, checked once, then named by digest.

A run's first message (the statistics query) carries the CKKS and the packed (BFV) public contexts
with the key holder's signatures, about 260 kB each; every later message names them only by their
SHA-256 (``ckks-context-sha256``, ``packed-context-sha256``). The site verifies a context's signature
against its enrolment before it keeps it, keeps it under ``<site>/contexts/<sha256>.bin`` (so a
ClientApp started in a fresh process, as Flower's process isolation does, finds it too) and in this
process's memory, already deserialised. A digest it holds no verified context for is a declared
refusal: the site encrypts only under a context its key holder signed, whatever the message says.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import tenseal as ts
from flwr.app import ConfigRecord

from federation.crypto import load_public_context
from federation.identity import Enrolment, verify_context
from federation.packing import PackedContext, load_packed_context
from node_agent.errors import PolicyRefusal

__all__ = ["CONTEXTS_DIR", "KINDS", "keep_sent", "public_context"]

CONTEXTS_DIR = "contexts"
KINDS = ("ckks", "packed")
_LOADED: dict[tuple[str, str], ts.Context | PackedContext] = {}  # (site folder, sha256) -> deserialised public context
_LOCK = threading.Lock()


def public_context(site_dir: Path, config: ConfigRecord, kind: str, enrolment: Enrolment) -> ts.Context | PackedContext:
    """The ``kind`` ("ckks" or "packed") public context this message names, verified.

    Raises
    ------
    PolicyRefusal
        If the message names no context, or one this site never received with a valid signature.
    PrivacyError
        If the context sent is not signed by the enrolled key holder, or carries a secret key.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown context kind {kind!r}")
    sent = config.get(f"{kind}-context")
    if sent is not None:
        blob = bytes(sent)  # type: ignore[arg-type]
        verify_context(blob, bytes(config.get(f"{kind}-context-signature", b"")), enrolment.verify_key_bytes)
        digest = hashlib.sha256(blob).hexdigest()
        named = config.get(f"{kind}-context-sha256")
        if named is not None and str(named) != digest:
            raise PolicyRefusal(f"the {kind} context sent does not match the digest the message names")
        return _remember(site_dir, kind, digest, blob)
    digest = str(config.get(f"{kind}-context-sha256", ""))
    if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise PolicyRefusal(f"the message names no {kind} public context")
    key = (str(site_dir), digest)
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
    path = site_dir / CONTEXTS_DIR / f"{digest}.bin"
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise PolicyRefusal(f"this site never received the {kind} public context {digest[:12]}… with its key "
                            "holder's signature (it comes with a run's first message)") from None
    if hashlib.sha256(blob).hexdigest() != digest:  # kept only after its signature checked; a changed file is refused
        raise PolicyRefusal(f"the kept {kind} public context {path} does not match its digest")
    return _remember(site_dir, kind, digest, blob)


def keep_sent(site_dir: Path, config: ConfigRecord, enrolment: Enrolment) -> dict[str, ts.Context | PackedContext]:
    """Verify and keep every public context the message carries (a run's first message carries both,
    though the statistics it asks for use only the CKKS one); return them by kind."""
    return {kind: public_context(site_dir, config, kind, enrolment) for kind in KINDS if f"{kind}-context" in config}


def _remember(site_dir: Path, kind: str, digest: str, blob: bytes) -> ts.Context | PackedContext:
    key = (str(site_dir), digest)
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
    # Either loader refuses a context that carries a secret key.
    context = load_packed_context(blob) if kind == "packed" else load_public_context(blob)
    folder = site_dir / CONTEXTS_DIR
    path = folder / f"{digest}.bin"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_bytes(blob)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none
    with _LOCK:
        _LOADED.setdefault(key, context)
        return _LOADED[key]
