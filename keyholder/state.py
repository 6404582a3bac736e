"""The key holder's state folder: its keys, the sites it enrolled, its callers' tokens, its ledger.

Layout (the folder is 0700, every secret file 0600)::

    secret-context.bin   CKKS context with the secret key (the only copy)
    public-context.bin   the same context without it
    signing-key.pem      Ed25519 key that signs the public context
    enrolments.json      site id -> institution code, tag key (secret), when
    tokens.json          caller name -> SHA-256 of its bearer token, role, revoked or not
    anchors.json         caller name -> the latest head of its audit log the key holder countersigned
    ledger.jsonl         hash-chained log of every decryption asked for: granted or refused, and why
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import tenseal as ts
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.audit import GENESIS, Anchor, AuditLog, anchor_message, check_extension
from federation.crypto import CKKSParams
from federation.errors import AuditTamperedError
from federation.identity import (
    Enrolment,
    b64,
    context_signature,
    fingerprint,
    unb64,
    write_secret,
)
from keyholder.errors import EnrolmentError, KeyHolderStateError, ReplayError, RoleError

__all__ = ["AUDIT_LOG", "ROLES", "AnchorConflict", "KeyHolderState"]

# What each token role may ask of the key holder.
ROLES: dict[str, frozenset[str]] = {"coordinator": frozenset({"decrypt", "anchor"}), "audit": frozenset({"anchor"})}
# The one audit log a key holder anchors (the city coordinator's), under the first caller that anchors it.
AUDIT_LOG = "city-audit-log"


class AnchorConflict(ReplayError):
    """An anchor that would contradict one the key holder signed before: a lower position, or another
    head at the same position (the caller's log was rewritten)."""

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class KeyHolderState:
    """The key holder's folder at ``home`` (``init`` makes it; everything else reads it)."""

    def __init__(self, home: Path | str) -> None:
        self.home = Path(home)

    # -- files -------------------------------------------------------------------------------
    @property
    def ledger(self) -> AuditLog:
        return AuditLog(self.home / "ledger.jsonl")

    def exists(self) -> bool:
        return (self.home / "secret-context.bin").is_file()

    def require(self) -> KeyHolderState:
        if not self.exists():
            raise KeyHolderStateError(f"no key holder at {self.home}: create it with `fenji keyholder init`")
        return self

    def init(self, params: CKKSParams | None = None) -> bool:
        """Make the keys if the folder has none; return whether it made them (never overwrites)."""
        if self.exists():
            return False
        params = params or CKKSParams()
        self.home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)
        context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=params.poly_modulus_degree,
                             coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
        context.global_scale = 2**params.scale_bits
        public = context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                                   save_relin_keys=False)
        secret = context.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False,
                                   save_relin_keys=False)
        key = Ed25519PrivateKey.generate()
        write_secret(self.home / "signing-key.pem", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (self.home / "public-context.bin").write_bytes(public)
        write_secret(self.home / "enrolments.json", "{}\n")
        write_secret(self.home / "tokens.json", "{}\n")
        # Written last: its presence says the folder is complete.
        write_secret(self.home / "secret-context.bin", secret)
        self.ledger.append(actor="keyholder", action="init", keyholder=self.keyholder_id,
                           poly_modulus_degree=params.poly_modulus_degree)
        return True

    def secret_context(self) -> ts.Context:
        return ts.context_from((self.require().home / "secret-context.bin").read_bytes())

    def public_context(self) -> bytes:
        return (self.require().home / "public-context.bin").read_bytes()

    def signing_key(self) -> Ed25519PrivateKey:
        key = serialization.load_pem_private_key((self.require().home / "signing-key.pem").read_bytes(), None)
        assert isinstance(key, Ed25519PrivateKey)
        return key

    @property
    def verify_key(self) -> bytes:
        return self.signing_key().public_key().public_bytes(serialization.Encoding.Raw,
                                                             serialization.PublicFormat.Raw)

    @property
    def keyholder_id(self) -> str:
        return fingerprint(self.verify_key)

    def context_signature(self) -> bytes:
        return context_signature(self.signing_key(), self.public_context())

    def _read(self, name: str) -> dict:
        return json.loads((self.require().home / name).read_text(encoding="utf-8"))

    def _update(self, name: str, change) -> object:
        """Read-modify-write ``name`` under an exclusive lock; ``change(data)`` returns its result."""
        lock_path = self.home / ".lock"
        with lock_path.open("a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read(name)
            result = change(data)
            write_secret(self.home / name, json.dumps(data, indent=2, sort_keys=True) + "\n")
            return result

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the folder's decryption lock (across processes): a check against the ledger and the
        entry that records its outcome happen with no other decryption in between."""
        with (self.home / ".decrypt.lock").open("a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # -- enrolment ---------------------------------------------------------------------------
    def enrol(self, site_id: str, institution: str) -> Enrolment:
        """Enrol a site: one enrolment per site id and one per institution code.

        Raises
        ------
        EnrolmentError
            If the site id is taken, or the institution is already enrolled under another name.
        """
        site_id, institution = site_id.strip(), institution.strip()
        if not site_id or not institution:
            raise EnrolmentError("a site id and an institution code are both needed")
        site_key = secrets.token_bytes(32)

        def add(data: dict) -> None:
            if site_id in data:
                raise EnrolmentError(f"site {site_id!r} is already enrolled (on {data[site_id]['enrolled_at']}); "
                                     "revoke it first to enrol it again")
            twin = [s for s, e in data.items() if e["institution"].casefold() == institution.casefold()]
            if twin:
                raise EnrolmentError(f"institution {institution!r} is already enrolled as site {twin[0]!r}: "
                                     "one clinic, one enrolment (two names would count it twice)")
            data[site_id] = {"institution": institution, "site_key": b64(site_key), "enrolled_at": _now()}

        self._update("enrolments.json", add)
        self.ledger.append(actor="keyholder-admin", action="enrol", site=site_id, institution=institution)
        return Enrolment(site_id=site_id, institution=institution, keyholder=self.keyholder_id,
                         verify_key=b64(self.verify_key), site_key=b64(site_key), issued_at=_now())

    def revoke_site(self, site_id: str) -> None:
        def drop(data: dict) -> None:
            if site_id not in data:
                raise EnrolmentError(f"site {site_id!r} is not enrolled")
            del data[site_id]

        self._update("enrolments.json", drop)
        self.ledger.append(actor="keyholder-admin", action="revoke-site", site=site_id)

    def enrolments(self) -> dict[str, dict]:
        return self._read("enrolments.json")

    def site_keys(self, site_ids: list[str]) -> dict[str, bytes]:
        enrolled = self.enrolments()
        return {s: unb64(enrolled[s]["site_key"]) for s in site_ids if s in enrolled}

    # -- callers' tokens ---------------------------------------------------------------------
    def issue_token(self, name: str, role: str = "coordinator") -> str:
        """A new bearer token for caller ``name`` (shown once; only its hash is kept); a new token for
        an existing name replaces the old one (rotation keeps the name, and with it the audit anchors).

        ``role``: ``coordinator`` may ask for decryptions and anchor the city's audit log; ``audit``
        may only anchor it (the governance service's token: it never needs to decrypt)."""
        if role not in ROLES:
            raise EnrolmentError(f"unknown role {role!r}; one of: {', '.join(sorted(ROLES))}")
        token = "fkh_" + secrets.token_urlsafe(32)

        def add(data: dict) -> None:
            data[name] = {"sha256": hashlib.sha256(token.encode()).hexdigest(), "role": role,
                          "issued_at": _now(), "revoked": False}

        self._update("tokens.json", add)
        self.ledger.append(actor="keyholder-admin", action="issue-token", caller=name, role=role)
        return token

    def revoke_token(self, name: str) -> None:
        def revoke(data: dict) -> None:
            if name not in data:
                raise EnrolmentError(f"no token named {name!r}")
            data[name]["revoked"] = True

        self._update("tokens.json", revoke)
        self.ledger.append(actor="keyholder-admin", action="revoke-token", caller=name)

    def caller_of(self, token: str) -> str | None:
        """The caller a bearer token belongs to (``None`` if unknown or revoked); compared in constant time."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        found = None
        for name, entry in self._read("tokens.json").items():
            if hmac.compare_digest(entry["sha256"], digest) and not entry.get("revoked"):
                found = name
        return found

    def role_of(self, name: str) -> str:
        return str(self._read("tokens.json").get(name, {}).get("role", ""))

    def require_role(self, name: str, action: str) -> None:
        """Raise ``RoleError`` unless caller ``name``'s role allows ``action`` ("decrypt" or "anchor")."""
        role = self.role_of(name)
        if action not in ROLES.get(role, frozenset()):
            self.ledger.append(actor=name, action="role-refused", role=role, wanted=action)
            raise RoleError(f"caller {name!r} has role {role!r}, which may not {action}")

    # -- anchors of callers' audit logs ------------------------------------------------------
    def anchor(self, caller: str, seq: int, head: str, entries: list[str]) -> Anchor:
        """Countersign ``caller``'s audit head (``seq`` entries ending in ``head``) and ledger it.

        ``entries`` are the lines after the caller's latest anchor (all of them the first time); the
        head is signed only if they extend that anchor's head to this one, so a caller that rewrote,
        re-chained or truncated its log cannot get the rewrite countersigned.

        Raises
        ------
        AnchorConflict
            If ``seq`` is below the latest anchored position, equal to it with another head, or the
            entries do not extend the latest anchor to ``head``.
        """
        path = self.require().home / "anchors.json"
        with (self.home / ".lock").open("a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            anchors = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            latest = anchors.get(AUDIT_LOG)
            if latest and latest["caller"] != caller:
                # One city audit log per key holder, anchored under one caller name (rotate its token,
                # keep the name): a second name would start a second, forked chain.
                self.ledger.append(actor=caller, action="anchor-refused", seq=seq, head=head,
                                   reason=f"the audit log is anchored by {latest['caller']!r}")
                raise AnchorConflict(f"refusing to anchor for {caller!r}: this key holder anchors the city's audit "
                                     f"log for {latest['caller']!r} only (rotate that caller's token instead)")
            if latest and (seq < latest["seq"] or (seq == latest["seq"] and head != latest["head"])):
                self.ledger.append(actor=caller, action="anchor-refused", seq=seq, head=head,
                                   anchored_seq=latest["seq"], anchored_head=latest["head"])
                what = "an earlier position" if seq < latest["seq"] else "another head at the same position"
                raise AnchorConflict(f"refusing to anchor {caller}'s audit log at entry {seq}: the key holder "
                                     f"anchored entry {latest['seq']} with {what} (the log was rewritten)")
            if latest and seq == latest["seq"]:
                return Anchor(**latest)
            try:
                check_extension(seq, head, entries, after=latest["seq"] if latest else 0,
                                after_head=latest["head"] if latest else GENESIS)
            except AuditTamperedError as exc:
                self.ledger.append(actor=caller, action="anchor-refused", seq=seq, head=head, reason=str(exc),
                                   anchored_seq=latest["seq"] if latest else 0)
                raise AnchorConflict(f"refusing to anchor {caller}'s audit log at entry {seq}: {exc}") from exc
            signed_at = _now()
            signature = self.signing_key().sign(anchor_message(caller, seq, head, signed_at))
            anchor = Anchor(caller=caller, seq=seq, head=head, keyholder=self.keyholder_id, signed_at=signed_at,
                            signature=b64(signature))
            self.ledger.append(actor=caller, action="anchor", seq=seq, head=head, signed_at=signed_at)
            anchors[AUDIT_LOG] = anchor.model_dump()
            write_secret(path, json.dumps(anchors, indent=2, sort_keys=True) + "\n")
            return anchor

    def latest_anchor(self, caller: str | None = None) -> Anchor | None:
        """The latest head of the city's audit log this key holder countersigned (``None``: none yet),
        whoever asks; it names the caller it was anchored for."""
        del caller  # one log per key holder (see ``anchor``)
        path = self.require().home / "anchors.json"
        latest = json.loads(path.read_text(encoding="utf-8")).get(AUDIT_LOG) if path.is_file() else None
        return Anchor(**latest) if latest else None
