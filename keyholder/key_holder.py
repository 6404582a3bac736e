"""The key holder: keeps the only secret key and decrypts a sum only when everything about it holds.

A decryption is granted when, in this order:

1. the claimed cohort is at least ``min_sites`` distinct, enrolled sites;
2. no decryption was made before for the same (run, phase, round): one per query, so no
   leave-one-out within a round and no second try at a forgery;
3. no combination of this cohort with the cohorts of earlier granted sums (of any task or phase:
   a site's data is the same whatever a query is called) adds up to fewer than ``min_sites`` sites
   (``exposed_sites``: leave-one-out across queries, or three cohorts that each differ by three
   but combine to one site), unless the sites themselves declared differential-privacy noise for
   this release (their tags bind that declaration) at an epsilon no weaker than ``max_dp_epsilon``;
4. the sum decrypts to finite values at the declared scale, its contributor slot counts exactly the
   cohort, and its tags are exactly the cohort's (``federation.tags``).

Every request, granted or refused, goes to the key holder's hash-chained ledger with its reason.
A refusal never says by how much a check failed: the size of a mismatch is itself about the data.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from itertools import combinations

import numpy as np
import tenseal as ts

from federation.crypto import WIDE_SCALE_BITS, unpack
from federation.identity import b64
from federation.keyholder_api import DecryptRequest, KeyHolderInfo
from federation.packing import (
    PackedParams,
    check_packed_tags,
    check_weight_sum,
    decrypt_packed,
    packed_length,
    unpack_values,
)
from federation.tags import TRAILER, check_tags
from keyholder.errors import (
    AggregateCheckError,
    CiphertextError,
    CohortError,
    NotEnoughSitesError,
    PrivacyError,
    ReplayError,
)
from keyholder.packed import (
    ensure_packed,
    packed_public_context,
    packed_secret_context,
    packed_signature,
)
from keyholder.state import KeyHolderState

__all__ = ["KeyHolder", "exposed_sites"]

_CONSUMING = ("decrypt", "decrypt-refused")


def exposed_sites(granted: Iterable[frozenset[str]], cohort: frozenset[str], min_sites: int) -> set[str] | None:
    """A set of fewer than ``min_sites`` sites that some combination of the cohorts' sums would
    isolate, once ``cohort``'s sum is decrypted beside ``granted``'s; ``None`` if there is none.

    The sums are linear in the sites' vectors: with the cohorts as 0/1 rows of a matrix ``M``, a
    combination ``y @ M`` that is non-zero only on a set ``T`` of sites reveals a function of ``T``'s
    data alone. Such a ``y`` exists iff dropping ``T``'s columns lowers the rank of ``M``; it is
    enough to test every ``T`` of exactly ``min_sites - 1`` sites (smaller sets are inside one).
    """
    rows = sorted({*granted, cohort}, key=sorted)
    if min_sites <= 1 or len(rows) < 2:
        return None
    sites = sorted(set().union(*rows))
    matrix = np.array([[s in row for s in sites] for row in rows], dtype=float)
    rank = np.linalg.matrix_rank(matrix)
    size = min(min_sites - 1, len(sites))
    for small in combinations(range(len(sites)), size):
        kept = [j for j in range(len(sites)) if j not in small]
        if np.linalg.matrix_rank(matrix[:, kept]) < rank if kept else rank > 0:
            return {sites[j] for j in small}
    return None


class KeyHolder:
    """The key holder's rules over its state folder (``keyholder.service`` serves them over HTTP)."""

    def __init__(self, state: KeyHolderState, *, min_sites: int = 3, max_dp_epsilon: float = 1.0) -> None:
        if min_sites < 1:
            raise ValueError("min_sites must be at least 1")
        self.state = state.require()
        self.min_sites = min_sites
        self.max_dp_epsilon = max_dp_epsilon
        self.__secret_context = state.secret_context()
        self.public_context = state.public_context()
        self._signature = state.context_signature()
        self._verify_key = state.verify_key
        ensure_packed(state)
        self.__packed_context = packed_secret_context(state)
        self.packed_public_context = packed_public_context(state)
        self._packed_signature = packed_signature(state)
        scale = self.__secret_context.global_scale
        self.scales = {round(float(np.log2(scale))), WIDE_SCALE_BITS}
        self._lock = threading.Lock()

    def info(self) -> KeyHolderInfo:
        return KeyHolderInfo(
            keyholder=self.state.keyholder_id, verify_key=b64(self._verify_key), public_context=b64(self.public_context),
            context_signature=b64(self._signature), min_sites=self.min_sites,
            enrolled_sites=len(self.state.enrolments()), packed_context=b64(self.packed_public_context),
            packed_signature=b64(self._packed_signature),
        )

    def decrypt_aggregate(self, blob: bytes, request: DecryptRequest, *, caller: str = "coordinator") -> np.ndarray:
        """The decrypted data of a sum, if every rule holds (see the module); else a ``PrivacyError``.

        Raises
        ------
        NotEnoughSitesError, CohortError, ReplayError
            Refused before decrypting (the query is not consumed by a cohort refusal).
        CiphertextError, AggregateCheckError
            Refused after decrypting: the query is consumed and nothing is released.
        """
        with self._lock, self.state.exclusive():
            record = {"caller": caller, "query": request.label.once_key, "kind": request.label.kind,
                      "cohort": sorted(request.cohort), "dp_epsilon": request.dp_epsilon, "length": request.length,
                      "private": self._private(request), "scheme": request.scheme}
            try:
                keys = self._check_cohort(request)
            except PrivacyError as exc:
                self.state.ledger.append(actor=caller, action="refused", reason=str(exc),
                                         error=type(exc).__name__, **record)
                raise
            try:
                values = self._decrypt_checked(blob, request, keys)
            except PrivacyError as exc:
                self.state.ledger.append(actor=caller, action="decrypt-refused", reason=str(exc),
                                         error=type(exc).__name__, **record)
                raise
            self.state.ledger.append(actor=caller, action="decrypt", **record)
            return values

    def _private(self, request: DecryptRequest) -> bool:
        """A DP release: every site declared noise (bound by its tags), none weaker than this key holder
        accepts (noise weaker than FENJI_MAX_DP_EPSILON buys no waiver of the differencing rule)."""
        return bool(request.cohort) and all(0 < request.epsilon_of(s) <= self.max_dp_epsilon for s in request.cohort)

    def _check_cohort(self, request: DecryptRequest) -> dict[str, bytes]:
        cohort = request.cohort
        if len(set(cohort)) != len(cohort):
            twice = sorted({s for s in cohort if cohort.count(s) > 1})
            raise CohortError(f"the cohort names {', '.join(twice)} more than once")
        keys = self.state.site_keys(cohort)
        unknown = sorted(set(cohort) - set(keys))
        if unknown:
            raise CohortError(f"not enrolled with this key holder: {', '.join(unknown)}")
        if len(cohort) < self.min_sites:
            raise NotEnoughSitesError(f"refusing to decrypt a sum over {len(cohort)} site(s): at least "
                                      f"{self.min_sites} (min-sites, set at the key holder) are required")
        if request.scheme == "ckks" and request.scale_bits not in self.scales:
            raise CohortError(f"scale 2^{request.scale_bits} is not one of the protocol's "
                              f"({', '.join(f'2^{s}' for s in sorted(self.scales))})")
        label, earlier = request.label, self.state.ledger.entries()
        if any(e["action"] in _CONSUMING and e["details"].get("query") == label.once_key for e in earlier):
            raise ReplayError(f"query {label.once_key} was already decrypted (or refused after decryption): "
                              "one decryption per run, phase and round")
        if not self._private(request):
            granted = {frozenset(e["details"]["cohort"]) for e in earlier
                       if e["action"] == "decrypt" and not e["details"].get("private")}
            exposed = exposed_sites(granted, frozenset(cohort), self.min_sites)
            if exposed:
                raise CohortError(
                    f"differencing: with the sums already decrypted, this cohort would let a combination of sums "
                    f"isolate fewer than min-sites ({self.min_sites}) sites (among {', '.join(sorted(exposed))}); "
                    "refused unless the sites add differential-privacy noise")
        return keys

    def _decrypt_checked(self, blob: bytes, request: DecryptRequest, keys: dict[str, bytes]) -> np.ndarray:
        if request.scheme == "packed":
            return self._decrypt_packed(blob, request, keys)
        try:
            vectors = [ts.ckks_vector_from(self.__secret_context, chunk) for chunk in unpack(blob)]
            scales = {round(float(np.log2(v.ciphertext()[0].scale))) for v in vectors}
            values = np.concatenate([np.asarray(v.decrypt()) for v in vectors]) if vectors else np.zeros(0)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise CiphertextError("the sum is not a ciphertext under this key holder's context") from exc
        if scales != {request.scale_bits}:
            raise CiphertextError(f"the sum is at scale(s) {sorted(scales)}, not 2^{request.scale_bits}")
        if values.size != request.length + TRAILER:
            raise AggregateCheckError(f"expected {request.length} values and a trailer of {TRAILER}, "
                                      f"got {values.size} values")
        if not np.isfinite(values).all():
            raise AggregateCheckError("the decrypted sum holds non-finite values")
        data, slot, tags = values[: request.length], float(values[request.length]), values[request.length + 1 :]
        if abs(slot - len(request.cohort)) > 0.01:
            raise AggregateCheckError(f"the contributor slot does not count the {len(request.cohort)} site(s) "
                                      "claimed: a ciphertext made under another key, added twice, or forged")
        check_tags(data, tags, site_keys={s: keys[s] for s in request.cohort}, label=request.label,
                   scale_bits=request.scale_bits, site_dp=request.site_dp)
        return data

    def _decrypt_packed(self, blob: bytes, request: DecryptRequest, keys: dict[str, bytes]) -> np.ndarray:
        """A packed sum (``federation.packing``): exact tags, then the weight sum (overflow), then the lanes."""
        if request.bound <= 0:
            raise AggregateCheckError("a packed sum needs the round's bound")
        length = packed_length(request.length - 1)
        slots = decrypt_packed(self.__packed_context, blob, length=length)
        check_packed_tags(slots, length=length, site_keys={s: keys[s] for s in request.cohort}, label=request.label,
                          t=PackedParams().plain_modulus, site_dp=request.site_dp)
        check_weight_sum(slots, length=length, sites=len(request.cohort))
        return unpack_values(slots[:length], n_values=request.length - 1, bound=request.bound)
