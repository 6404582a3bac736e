"""The encryption both sides speak: CKKS (TenSEAL) for an additions-only protocol. Sites encrypt,
the aggregator (``coordinator.aggregator``) adds, the key holder (``keyholder``) decrypts sums over
enough sites and nothing else.

Parties and what they hold:

- the **key holder** makes the context and keeps the only copy of the secret key;
- **sites** and the **aggregator** get the *public* context (public key, no secret key, no Galois
  or relinearisation keys: the aggregator only adds, so it needs none of them);
- every encrypted vector ends with a contributor slot set to 1 by the site, so the decrypted sum
  says how many sites it covers and the key holder can refuse one over fewer than ``min_sites``.

A site's reply is only bytes: the aggregator reads each one (``Aggregator.read``) before adding it,
and a reply that does not deserialise under the public context, has the wrong length or the wrong
scale is a ``CiphertextError`` (the coordinator leaves that site out). A ciphertext made under
another key cannot be told apart before decryption; the key holder's checks on the decrypted sum
(finite values, a whole contributor count equal to the number of replies summed) catch it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import tenseal as ts

from federation.errors import CiphertextError, PrivacyError, SiteDataError

__all__ = [
    "CONTRIBUTOR_TOLERANCE",
    "WIDE_SCALE_BITS",
    "CKKSParams",
    "Decryptor",
    "chunk_sizes",
    "encrypt_vector",
    "load_public_context",
    "pack",
    "slot_count",
    "unpack",
]

# The scale for sums whose values run large (federated statistics, calibration histograms); see
# ``CKKSParams``. Model updates use the context's own scale.
WIDE_SCALE_BITS = 25

# How far a decrypted contributor slot may be from a whole number (CKKS noise is near 1e-4 at the
# wide scale); a sum spoilt by a foreign key decrypts to values in the millions, any fraction.
CONTRIBUTOR_TOLERANCE = 0.01


@dataclass(frozen=True)
class CKKSParams:
    """CKKS parameters for additions only: no rescaling, so one data prime and the special prime.

    With a 60-bit data prime and scale 2^40, values up to about 2^18 in magnitude decrypt with an
    error near 1e-8; larger values (sums of squares in federated statistics) are encrypted at a
    smaller scale (``encrypt_vector(..., scale_bits=25)``: up to 2^34, error near 1e-3).
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 60)
    scale_bits: int = 40

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2


def pack(chunks: Sequence[bytes]) -> bytes:
    header = struct.pack(f"<I{len(chunks)}Q", len(chunks), *(len(c) for c in chunks))
    return header + b"".join(chunks)


def unpack(blob: bytes) -> list[bytes]:
    try:
        (count,) = struct.unpack_from("<I", blob)
        sizes = struct.unpack_from(f"<{count}Q", blob, 4)
    except struct.error as exc:
        raise CiphertextError("not an encrypted vector: malformed header") from exc
    offset, chunks = 4 + 8 * count, []
    for size in sizes:
        chunks.append(blob[offset : offset + size])
        offset += size
    if offset != len(blob):
        raise CiphertextError("not an encrypted vector: sizes do not match its length")
    return chunks


def chunk_sizes(n_values: int, slots: int) -> list[int]:
    return [min(slots, n_values - start) for start in range(0, n_values, slots)]


def load_public_context(public_context: bytes) -> ts.Context:
    """Load a context that must not hold a secret key (sites and aggregator)."""
    context = ts.context_from(public_context)
    if context.has_secret_key():
        raise PrivacyError("refusing a CKKS context that carries a secret key")
    return context


def slot_count(context: ts.Context) -> int:
    return context.seal_context().data.key_context_data().parms().poly_modulus_degree() // 2


def encrypt_vector(context: ts.Context, values: np.ndarray, *, scale_bits: int | None = None) -> bytes:
    """Encrypt ``values`` plus a contributor slot of 1, chunked to whole ciphertexts.

    Vectors added together must be encrypted at the same ``scale_bits`` (default: the context's).

    Raises
    ------
    SiteDataError
        If a value is NaN or infinite: it would turn the whole federated sum into garbage.
    """
    data = np.append(np.asarray(values, dtype=float).ravel(), 1.0)
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise SiteDataError(f"refusing to encrypt {bad} non-finite value(s) (NaN or infinity)")
    slots = slot_count(context)
    scale = None if scale_bits is None else float(2**scale_bits)
    chunks = [
        ts.ckks_vector(context, data[i : i + slots].tolist(), scale).serialize()
        for i in range(0, len(data), slots)
    ]
    return pack(chunks)


class Decryptor(Protocol):
    """What the coordinator may ask of the key holder: its public context, and the decryption of a
    sum it claims covers ``contributors`` replies (the key holder checks that claim)."""

    def get_public_context(self) -> bytes: ...

    def decrypt_aggregate(self, blob: bytes, *, length: int, contributors: int | None = None) -> np.ndarray: ...
