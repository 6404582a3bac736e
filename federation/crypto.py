"""CKKS (TenSEAL) for an additions-only protocol: sites encrypt, the aggregator adds, the key holder
decrypts sums over enough sites and nothing else.

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

import hashlib
import multiprocessing
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.managers import BaseManager

import numpy as np
import tenseal as ts

from models.errors import (
    AggregateCheckError,
    CiphertextError,
    NotEnoughSitesError,
    PrivacyError,
    SiteDataError,
)

__all__ = [
    "WIDE_SCALE_BITS",
    "Aggregator",
    "CKKSParams",
    "KeyHolder",
    "encrypt_vector",
    "load_public_context",
    "slot_count",
    "start_key_holder_process",
]

# The scale for sums whose values run large (federated statistics, calibration histograms); see
# ``CKKSParams``. Model updates use the context's own scale.
WIDE_SCALE_BITS = 25

# How far a decrypted contributor slot may be from a whole number (CKKS noise is near 1e-4 at the
# wide scale); a sum spoilt by a foreign key decrypts to values in the millions, any fraction.
_CONTRIBUTOR_TOLERANCE = 0.01


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


def _pack(chunks: Sequence[bytes]) -> bytes:
    header = struct.pack(f"<I{len(chunks)}Q", len(chunks), *(len(c) for c in chunks))
    return header + b"".join(chunks)


def _unpack(blob: bytes) -> list[bytes]:
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


def _chunk_sizes(n_values: int, slots: int) -> list[int]:
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
    return _pack(chunks)


class Aggregator:
    """Adds encrypted vectors. Holds the public context only: it cannot decrypt anything."""

    def __init__(self, public_context: bytes) -> None:
        self.context = load_public_context(public_context)

    @property
    def scale_bits(self) -> int:
        """The public context's own scale, the one model updates are encrypted at."""
        return round(float(np.log2(self.context.global_scale)))

    def read(self, blob: bytes, *, length: int | None = None, scale_bits: int | None = None) -> list[ts.CKKSVector]:
        """One site's encrypted vector, checked before it may join a sum.

        Parameters
        ----------
        blob
            What the site sent.
        length
            The number of values the protocol expects (the contributor slot not counted).
        scale_bits
            The scale it must be encrypted at; by default any, as long as the summands agree.

        Raises
        ------
        CiphertextError
            If it does not deserialise under the public context (random bytes, truncated, other CKKS
            parameters) or has the wrong number of chunks, values or scale.
        """
        chunks = _unpack(blob)
        expected = None if length is None else _chunk_sizes(length + 1, slot_count(self.context))
        if expected is not None and len(chunks) != len(expected):
            raise CiphertextError(f"{len(chunks)} ciphertext chunk(s), expected {len(expected)}")
        vectors = []
        for i, chunk in enumerate(chunks):
            try:
                vector = ts.ckks_vector_from(self.context, chunk)
            except Exception as exc:  # TenSEAL raises ValueError or RuntimeError, by cause
                raise CiphertextError(f"chunk {i} is not a CKKS ciphertext under the public context ({exc})") from exc
            if expected is not None and vector.size() != expected[i]:
                raise CiphertextError(f"chunk {i} holds {vector.size()} values, expected {expected[i]}")
            scale = vector.ciphertext()[0].scale
            if scale_bits is not None and scale != 2.0**scale_bits:
                raise CiphertextError(f"chunk {i} is at scale 2^{np.log2(scale):.1f}, expected 2^{scale_bits}")
            vectors.append(vector)
        return vectors

    def add(self, blobs: Sequence[bytes], *, length: int | None = None, scale_bits: int | None = None) -> bytes:
        """The encrypted sum of ``blobs``, each read (and checked) as in ``read``."""
        if not blobs:
            raise PrivacyError("nothing to aggregate")
        parts = [self.read(b, length=length, scale_bits=scale_bits) for b in blobs]
        if len({len(p) for p in parts}) != 1:
            raise CiphertextError("encrypted vectors of different lengths cannot be added")
        summed = []
        for group in zip(*parts):
            total = group[0]
            try:
                for vector in group[1:]:
                    total += vector
            except Exception as exc:  # sizes or scales that differ
                raise CiphertextError(f"encrypted vectors that cannot be added: {exc}") from exc
            summed.append(total.serialize())
        return _pack(summed)


class KeyHolder:
    """Holds the secret key; decrypts only aggregates over at least ``min_sites`` sites.

    It is a separate party from the aggregator: the aggregator is handed ``public_context`` and
    asks for decryptions through ``decrypt_aggregate``, never sees the secret context.
    """

    def __init__(self, *, min_sites: int = 3, params: CKKSParams | None = None) -> None:
        if min_sites < 1:
            raise ValueError("min_sites must be at least 1")
        self.min_sites = min_sites
        self.params = params or CKKSParams()
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=self.params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(self.params.coeff_mod_bit_sizes),
        )
        context.global_scale = 2**self.params.scale_bits
        self.__secret_context = context
        self.public_context = context.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
        self.public_context_digest = hashlib.sha256(self.public_context).hexdigest()

    def get_public_context(self) -> bytes:
        """The public context (for sites and the aggregator); a method so process proxies reach it."""
        return self.public_context

    def decrypt_aggregate(self, blob: bytes, *, length: int, contributors: int | None = None) -> np.ndarray:
        """Decrypt a sum of encrypted vectors of ``length`` values each.

        Parameters
        ----------
        contributors
            How many vectors the aggregator says it summed; the contributor slot must agree.

        Raises
        ------
        AggregateCheckError
            If the sum is not a consistent aggregate: a value is not finite, the contributor slot is
            not a whole number, or not ``contributors``. That is what a ciphertext made under
            another key decrypts to; such a sum is never released.
        NotEnoughSitesError
            If the sum covers fewer than ``min_sites`` sites (read from the contributor slot).
        """
        try:
            values = np.concatenate([
                np.asarray(ts.ckks_vector_from(self.__secret_context, chunk).decrypt())
                for chunk in _unpack(blob)
            ])
        except (ValueError, RuntimeError) as exc:
            raise CiphertextError(f"the aggregate is not a ciphertext under this key holder's context ({exc})") from exc
        if values.size != length + 1:
            raise AggregateCheckError(f"expected {length} values and a contributor slot, got {values.size}")
        if not np.isfinite(values).all():
            raise AggregateCheckError(f"the decrypted aggregate holds {int((~np.isfinite(values)).sum())} "
                                      "non-finite value(s)")
        slot = float(values[-1])
        if abs(slot - round(slot)) > _CONTRIBUTOR_TOLERANCE:
            raise AggregateCheckError(f"the contributor slot decrypts to {slot:.6g}, not a whole number of sites: "
                                      "a ciphertext made under another key, or a corrupted one")
        if contributors is not None and round(slot) != contributors:
            raise AggregateCheckError(f"the contributor slot counts {round(slot)} site(s), but {contributors} "
                                      "replies were summed: a ciphertext made under another key, or a forged one")
        contributors = round(slot)
        if contributors < self.min_sites:
            raise NotEnoughSitesError(
                f"refusing to decrypt an aggregate over {contributors} site(s): "
                f"at least {self.min_sites} are required"
            )
        return values[:-1]


class _KeyHolderManager(BaseManager):
    pass


_KeyHolderManager.register("KeyHolder", KeyHolder)


def start_key_holder_process(*, min_sites: int = 3, params: CKKSParams | None = None) -> tuple[BaseManager, KeyHolder]:
    """Run the key holder in a process of its own; return (manager, proxy).

    The caller (the aggregator's process) only ever has the proxy: its methods run in the other
    process, and the secret key never enters the caller's memory. ``manager.shutdown()`` ends it.
    """
    manager = _KeyHolderManager(ctx=multiprocessing.get_context("spawn"))
    manager.start()
    return manager, manager.KeyHolder(min_sites=min_sites, params=params)  # type: ignore[attr-defined]
