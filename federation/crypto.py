"""The encryption both sides speak: CKKS (TenSEAL) for an additions-only protocol. Sites encrypt,
the aggregator (``coordinator.aggregator``) adds, the key holder (``keyholder``) decrypts sums over
enough sites and nothing else.

Parties and what they hold:

- the **key holder** makes the context and keeps the only copy of the secret key;
- **sites** and the **aggregator** get the *public* context (public key, no secret key, no Galois
  or relinearisation keys: the aggregator only adds, so it needs none of them);
- every encrypted vector ends with a trailer (``federation.tags.TRAILER`` values): a contributor
  slot set to 1 by the site, so the decrypted sum says how many sites it covers, then the site's
  tags, which bind the vector to its site, its data and one query; the key holder checks them
  against the cohort the aggregator claims and refuses any sum that is not exactly that cohort's.

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

import numpy as np
import tenseal as ts

from federation.errors import CiphertextError, PrivacyError, SiteDataError
from federation.tags import TAG_SLOTS, QueryLabel, site_tags

__all__ = [
    "CONTRIBUTOR_TOLERANCE",
    "WIDE_SCALE_BITS",
    "CKKSParams",
    "chunk_sizes",
    "encrypt_contribution",
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


def encrypt_vector(context: ts.Context, values: np.ndarray, *, tags: np.ndarray, scale_bits: int | None = None) -> bytes:
    """Encrypt ``values``, a contributor slot of 1 and the site's ``tags`` (``federation.tags.site_tags``),
    chunked to whole ciphertexts.

    Vectors added together must be encrypted at the same ``scale_bits`` (default: the context's).

    Raises
    ------
    SiteDataError
        If a value is NaN or infinite: it would turn the whole federated sum into garbage.
    """
    tags = np.asarray(tags, dtype=float).ravel()
    if tags.size != TAG_SLOTS:
        raise ValueError(f"expected {TAG_SLOTS} tags, got {tags.size}")
    data = np.concatenate([np.asarray(values, dtype=float).ravel(), [1.0], tags])
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


def encrypt_contribution(context: ts.Context, values: np.ndarray, *, site_key: bytes, label: QueryLabel,
                         scale_bits: int | None = None) -> bytes:
    """A site's reply to one query: ``values`` with the contributor slot and the site's tags for ``label``."""
    values = np.asarray(values, dtype=float).ravel()
    return encrypt_vector(context, values, tags=site_tags(values, site_key, label), scale_bits=scale_bits)
