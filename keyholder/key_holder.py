"""The key holder: it makes the CKKS context, keeps the only copy of the secret key, and decrypts
only sums over at least ``min_sites`` sites whose contributor count matches what the aggregator
claims. Today it runs as a process of its own beside the coordinator (``start_key_holder_process``).
"""

from __future__ import annotations

import hashlib
import multiprocessing
from multiprocessing.managers import BaseManager

import numpy as np
import tenseal as ts

from federation.crypto import CONTRIBUTOR_TOLERANCE, CKKSParams, unpack
from keyholder.errors import AggregateCheckError, CiphertextError, NotEnoughSitesError

__all__ = ["KeyHolder", "start_key_holder_process"]


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
                for chunk in unpack(blob)
            ])
        except (ValueError, RuntimeError) as exc:
            raise CiphertextError(f"the aggregate is not a ciphertext under this key holder's context ({exc})") from exc
        if values.size != length + 1:
            raise AggregateCheckError(f"expected {length} values and a contributor slot, got {values.size}")
        if not np.isfinite(values).all():
            raise AggregateCheckError(f"the decrypted aggregate holds {int((~np.isfinite(values)).sum())} "
                                      "non-finite value(s)")
        slot = float(values[-1])
        if abs(slot - round(slot)) > CONTRIBUTOR_TOLERANCE:
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
