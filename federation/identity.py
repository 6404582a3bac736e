"""Who is who: the key holder's signing key pins its public context; an enrolment ties a site to the
key holder with a secret only the two of them hold.

- The key holder signs ``sha256(public context)`` with Ed25519. A node is given the key holder's
  verification key at enrolment (out of band) and encrypts under no context that key did not sign,
  so a coordinator that sends its own public key gets a refusal, not ciphertexts it can read.
- An enrolment file (made by ``fenji keyholder enrol``, installed by ``fenji node enrol``) holds the
  site's id, its institution code, the key holder's verification key and the site's tag key
  (``federation.tags``). It is a secret of the site: written readable by its owner only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from federation.errors import PrivacyError, SettingsError

__all__ = ["ENROLMENT_FILE", "Enrolment", "context_signature", "fingerprint", "load_enrolment",
           "verify_context", "write_secret"]

ENROLMENT_FILE = "enrolment.json"
_CONTEXT_DOMAIN = b"fenji-ckks-public-context-v1\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


def fingerprint(verify_key: bytes) -> str:
    """A short name for a verification key (first 16 hex digits of its SHA-256)."""
    return hashlib.sha256(verify_key).hexdigest()[:16]


def context_signature(signing_key: Ed25519PrivateKey, public_context: bytes) -> bytes:
    return signing_key.sign(_CONTEXT_DOMAIN + hashlib.sha256(public_context).digest())


def verify_context(public_context: bytes, signature: bytes, verify_key: bytes) -> None:
    """Raise ``PrivacyError`` unless ``signature`` is the pinned key holder's over ``public_context``."""
    try:
        Ed25519PublicKey.from_public_bytes(verify_key).verify(
            signature, _CONTEXT_DOMAIN + hashlib.sha256(public_context).digest())
    except (InvalidSignature, ValueError) as exc:
        raise PrivacyError(
            f"refusing a CKKS public context not signed by the enrolled key holder ({fingerprint(verify_key)}): "
            "it could be someone else's key"
        ) from exc


class Enrolment(BaseModel):
    """One site's enrolment with one key holder (a secret of the site)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site_id: str = Field(min_length=1)
    institution: str = Field(min_length=1, description="The clinic's registration code; one enrolment each.")
    keyholder: str = Field(description="Fingerprint of the key holder's verification key.")
    verify_key: str = Field(description="The key holder's Ed25519 verification key (base64).")
    site_key: str = Field(description="The tag key shared by this site and the key holder (base64).")
    issued_at: str

    @field_validator("verify_key", "site_key")
    @classmethod
    def _is_a_32_byte_key(cls, value: str) -> str:
        try:
            key = unb64(value)
        except ValueError as exc:
            raise ValueError("not base64") from exc
        if len(key) != 32:
            raise ValueError(f"a key of {len(key)} bytes, expected 32")
        return value

    @property
    def verify_key_bytes(self) -> bytes:
        return unb64(self.verify_key)

    @property
    def site_key_bytes(self) -> bytes:
        return unb64(self.site_key)

    def save(self, path: Path) -> Path:
        return write_secret(path, self.model_dump_json(indent=2) + "\n")


def write_secret(path: Path, text: str | bytes) -> Path:
    """Write ``path`` readable and writable by its owner only (created that way, never widened)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def load_enrolment(path: Path) -> Enrolment:
    """The enrolment at ``path``.

    Raises
    ------
    SettingsError
        If it is missing or not an enrolment file (with what to do).
    """
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"no enrolment at {path}: enrol the site with the key holder "
                            "(`fenji keyholder enrol`, then `fenji node enrol`)")
    try:
        return Enrolment.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, ValidationError) as exc:
        raise SettingsError(f"{path} is not an enrolment file: {str(exc).splitlines()[0]}") from exc
