"""The key holder's HTTP API as both sides see it: paths, the request and answer shapes, and the
``Decryptor`` protocol the coordinator programs against (``coordinator.keyholder_client`` speaks it
over HTTP; ``keyholder.service`` serves it).

``POST /v1/decrypt``: the body is the encrypted sum (bytes, ``application/octet-stream``); the
request's JSON (``DecryptRequest``) travels base64url-encoded in the ``X-Fenji-Request`` header;
the answer is the decrypted data (float64, little-endian) without the trailer. Callers present
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from federation.tags import QueryLabel

__all__ = ["DECRYPT_PATH", "INFO_PATH", "REQUEST_HEADER", "DecryptRequest", "Decryptor", "KeyHolderInfo",
           "decode_request", "encode_request"]

INFO_PATH = "/v1/info"
DECRYPT_PATH = "/v1/decrypt"
REQUEST_HEADER = "X-Fenji-Request"


class KeyHolderInfo(BaseModel):
    """What the key holder publishes: its public context (signed), its verification key and its rule."""

    model_config = ConfigDict(extra="forbid")

    keyholder: str = Field(description="Fingerprint of the verification key.")
    verify_key: str = Field(description="Ed25519 verification key (base64).")
    public_context: str = Field(description="The CKKS public context (base64).")
    context_signature: str = Field(description="Ed25519 signature over sha256(public context) (base64).")
    min_sites: int = Field(ge=1, description="Fewest distinct enrolled sites a decrypted sum may cover.")
    enrolled_sites: int = Field(ge=0)
    packed_context: str = Field("", description="The BFV public context for packed model updates (base64; "
                                "federation.packing); empty from a key holder without one.")
    packed_signature: str = Field("", description="Ed25519 signature over sha256(packed context) (base64).")

    @property
    def public_context_bytes(self) -> bytes:
        return base64.b64decode(self.public_context)

    @property
    def signature_bytes(self) -> bytes:
        return base64.b64decode(self.context_signature)

    @property
    def packed_context_bytes(self) -> bytes:
        return base64.b64decode(self.packed_context)

    @property
    def packed_signature_bytes(self) -> bytes:
        return base64.b64decode(self.packed_signature)


class DecryptRequest(BaseModel):
    """One decryption: what it is for (the label), whose replies the sum claims to be, its shape."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(min_length=1, max_length=200)
    # A surveillance sum's phase names its district (federation.surveillance.sum_phase).
    phase: str = Field(pattern=r"^(stats|train|calibrate|analytics|surveillance:[a-z0-9][a-z0-9_-]{0,39})$")
    round: int = Field(ge=0)
    task: str = Field(min_length=1, max_length=200)
    dp_epsilon: float = Field(0.0, ge=0.0)
    inputs: str = Field("", max_length=64, description="Digest of the inputs every site of the cohort was sent.")
    cohort: list[str] = Field(min_length=1, description="The enrolled site ids whose replies were summed.")
    site_dp: dict[str, float] = Field(default_factory=dict, description="The DP epsilon each site declared it "
                                      "applied (its tags bind it); a site not named: the label's dp_epsilon.")
    length: int = Field(ge=1, description="Data values in the sum (the trailer not counted).")
    scale_bits: int = Field(ge=1, le=59)
    scheme: Literal["ckks", "packed"] = Field("ckks", description="ckks: one value per slot; packed: fixed-point "
                                              "lanes in BFV (federation.packing), the data a model update and its weight.")
    bound: float = Field(0.0, ge=0.0, le=2.0**20, description="packed: the round's bound on each site's change |theta - g| (sets the step).")

    @property
    def label(self) -> QueryLabel:
        return QueryLabel(run_id=self.run_id, phase=self.phase, round=self.round, task=self.task,
                          dp_epsilon=self.dp_epsilon, inputs=self.inputs)

    @classmethod
    def of(cls, label: QueryLabel, *, cohort: Sequence[str], length: int, scale_bits: int,
           site_dp: dict[str, float] | None = None, scheme: str = "ckks", bound: float = 0.0) -> DecryptRequest:
        return cls(**label.to_dict(), cohort=list(cohort), length=length, scale_bits=scale_bits,
                   site_dp=dict(site_dp or {}), scheme=scheme, bound=bound)

    def epsilon_of(self, site: str) -> float:
        return float(self.site_dp.get(site, self.dp_epsilon))


def encode_request(request: DecryptRequest) -> str:
    return base64.urlsafe_b64encode(request.model_dump_json().encode()).decode()


def decode_request(header: str) -> DecryptRequest:
    return DecryptRequest.model_validate_json(base64.urlsafe_b64decode(header.encode()))


class Decryptor(Protocol):
    """What the coordinator may ask of the key holder."""

    def info(self) -> KeyHolderInfo: ...

    def decrypt_aggregate(self, blob: bytes, request: DecryptRequest) -> np.ndarray: ...
