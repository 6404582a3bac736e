"""The coordinator's aggregator: it reads each site's ciphertext and adds them. It holds the public
context only, so it cannot decrypt anything; sums go to the key holder (``federation.crypto.Decryptor``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tenseal as ts

from coordinator.streaming import RunningSum
from federation.crypto import chunk_sizes, load_public_context, slot_count, unpack
from federation.errors import CiphertextError
from federation.packing import load_packed_context, packed_length, read_packed
from federation.tags import TRAILER

__all__ = ["Aggregator"]


class Aggregator:
    """Adds encrypted vectors. Holds the public context only: it cannot decrypt anything."""

    def __init__(self, public_context: bytes, packed_context: bytes | None = None) -> None:
        self.context = load_public_context(public_context)
        # Model updates packed as fixed-point lanes in BFV (federation.packing), when the key holder offers it.
        self.packed_context = load_packed_context(packed_context) if packed_context else None

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

    def running(self, *, length: int | None = None, scale_bits: int | None = None, packed: bool = False) -> RunningSum:
        """An empty encrypted sum that replies are added to one by one (``RunningSum.add``); ``packed``:
        model updates of ``length`` values (the weight included) packed by ``federation.packing``."""
        if packed:
            if self.packed_context is None:
                raise CiphertextError("no packed context: the key holder offers none")
            context = self.packed_context
            return RunningSum(lambda blob, length, scale_bits: read_packed(context, blob, length=length),
                              length=None if length is None else packed_length(length - 1), scale_bits=None)
        return RunningSum(self.read, length=length, scale_bits=scale_bits)

    def add(self, blobs: Sequence[bytes], *, length: int | None = None, scale_bits: int | None = None) -> bytes:
        """The encrypted sum of ``blobs``, each read (and checked) as in ``read``."""
        total = self.running(length=length, scale_bits=scale_bits)
        for blob in blobs:
            total.add(blob)
        return total.serialize()
