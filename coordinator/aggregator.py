"""The coordinator's aggregator: it reads each site's ciphertext and adds them. It holds the public
context only, so it cannot decrypt anything; sums go to the key holder (``federation.crypto.Decryptor``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tenseal as ts

from federation.crypto import chunk_sizes, load_public_context, pack, slot_count, unpack
from federation.errors import CiphertextError, PrivacyError
from federation.tags import TRAILER

__all__ = ["Aggregator"]


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
            The number of data values the protocol expects (the trailer: contributor slot and tags, not counted).
        scale_bits
            The scale it must be encrypted at; by default any, as long as the summands agree.

        Raises
        ------
        CiphertextError
            If it does not deserialise under the public context (random bytes, truncated, other CKKS
            parameters) or has the wrong number of chunks, values or scale.
        """
        chunks = unpack(blob)
        expected = None if length is None else chunk_sizes(length + TRAILER, slot_count(self.context))
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
        return pack(summed)
