"""Packed model updates: fixed-point values, two per slot, in BFV ciphertexts whose every coefficient
carries data (issue 17).

CKKS (``federation.crypto``) spends a whole slot, 32 bytes of ciphertext, on each value: 8x the
bytes of a float32 update. Model updates do not need CKKS's approximate reals; they need a sum.
So a site sends ``Enc([w_i * (theta_i - g), w_i])`` as integers: its change from the round's global
model ``g`` (which every site of a sum was sent alike: its digest is in the tags), weighted. The
coordinator releases ``g + sum(w_i * (theta_i - g)) / sum(w_i)``, the weighted average of the models.

- **fixed point**: each value ``w_i * d_j`` (``d = theta_i - g``) becomes an integer near ``w_i * d_j / step``,
  with ``step = bound / 2^16`` for a per-round ``bound`` on ``|d_j|`` (``packing_bound``: twice the
  global model's largest value, a power of 2) that every site holds before it encrypts:
  ``encrypt_packed`` refuses values beyond it, so the node agent clips its change to the bound first
  and records each clip in its own audit log (``packing-clip``), since refusing would tell the
  coordinator one bit about the site's data each round;
- **two values per slot** (lanes of ``LANE_BITS`` bits): ``slot = q_lo + 2^19 * q_hi`` (the low lane
  is read back within ``+-2^18``, the high one within what ``t`` leaves, about ``+-2^18``);
- **BFV batching** (TenSEAL ``bfv_vector``): N = 8192 slots per ciphertext, not CKKS's N/2, a
  56-bit data prime (stored compressed) and a 38-bit plaintext modulus ``t``;
- **the ring by the vector's length** (``PackedContext.plan``): full chunks in the N = 8192 ring,
  and the rest, when it fits, in one N = 4096 ciphertext (same ``t``) of about half the bytes, so
  a 1k-parameter model does not pay for 8,192 slots.

**Overflow is impossible by construction, for honest parties.** The weights sum to 1 (``w_i = n_i / N``), so with every
``|d_j| <= bound`` the summed lane holds at most ``2^16 * sum(w_i) + S`` in magnitude, inside
its ``+-2^17`` with a factor of 2 to spare. The weight itself is a slot of its own at ``WEIGHT_SCALE``,
which cannot overflow below 2^12 sites; the key holder decrypts, reads the weight sum and refuses
(``check_weight_sum``) any sum whose weights exceed 1 (a coordinator that lied about N to inflate
them), before a lane is read. That check is a safety net against mistakes, not a defence: ``a`` is
public, so a malicious coordinator can add ``Enc(delta)`` to the weight slot with matching tags. It
can only corrupt the model that way (what is released stays a function of the cohort's sum), as a
malicious site could by sending lanes of any size. BFV decryption is exact; its noise (std about 2^8.4 per site at
N = 8192) stays far below the ``2^17`` half-step of ``q/t``, even at 10,000 sites.

**Error budget.** Rounding is stochastic (up with probability the fraction, from a generator seeded
by HMAC of the query under the site's key), so it is unbiased: each site's value moves by less than
one ``step``, the sum of S sites by less than ``S * step`` (``max_error``), and in practice by about
``step * sqrt(S / 6)``, with mean zero. That is the only error: there is no encryption noise in the
result. It is an error on the round's change, and the step follows the model's scale (``bound / 2^16``;
1.2e-4 for round 1 of a zero-initialised model, 8e-6 for an MLP whose largest weight is under 0.25).

What went wrong before (values rounded to the nearest under a floor of 8): docs/threat-model.md.

**Tags**, as for CKKS (``federation.tags``) but exact, modulo ``t``: ``tag_k = <a_k, slots> + b_k``
over the data slots (lanes packed, weight slot included), with ``a_k`` public from the label and
``b_k`` from HMAC of the label under the site's key; the contributor slot counts the sites.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import tenseal as ts

from federation.crypto import pack, unpack
from federation.errors import (
    AggregateCheckError,
    CiphertextError,
    PrivacyError,
    SiteDataError,
)
from federation.primes import batching_prime
from federation.tags import TAG_SLOTS, QueryLabel

__all__ = [
    "LANE_BITS",
    "SMALL_RING",
    "PackedContext",
    "PackedParams",
    "check_packed_tags",
    "check_weight_sum",
    "decrypt_packed",
    "encrypt_packed",
    "load_packed_context",
    "make_packed_context",
    "max_error",
    "packed_length",
    "packing_bound",
    "read_packed",
    "step_of",
    "unpack_values",
]

LANE_BITS = 19
_LANE = 1 << LANE_BITS
_FRACTION_BITS = 16  # |q| <= 2^16 for |value| <= bound: a factor of 2 below the lane's 2^17 (see module)
WEIGHT_SCALE = 2.0**24
MAX_SITES = 1 << 12
ZERO_BOUND = 8.0  # the bound while the global model is all zero
MIN_BOUND_BITS = -4  # the bound is never below 2^-4 (step 1e-6): a model near zero is not clipped to nothing


@dataclass(frozen=True)
class PackedParams:
    """BFV for additions only. 56 + 60 bits stay far inside the 218 bits allowed at N = 8192 for
    128-bit security; the 60-bit prime is the special prime (only the 56-bit one is sent)."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (56, 60)
    plain_modulus_bits: int = 38

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree

    @property
    def plain_modulus(self) -> int:
        return batching_prime(self.plain_modulus_bits, self.poly_modulus_degree)


# Ring by length: the tail of a vector (or a whole small model) goes in a ciphertext of the smaller
# ring when it fits, half the bytes of a large one. Same t (t = 1 mod 2N holds for both rings);
# 60 + 49 = 109 bits is the most N = 4096 allows at 128-bit security, and its 60-bit data prime
# leaves more noise room than the large ring's 56 bits (measured: 2^14 identical sums decrypt exactly).
SMALL_RING = PackedParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 49))
_MAGIC = b"fenji-packed-rings-v1"


@dataclass(frozen=True)
class PackedContext:
    """The key holder's packed BFV contexts: the large ring and the small one (``None`` for a key holder
    made before the small ring existed: every chunk then goes in the large ring)."""

    large: ts.Context
    small: ts.Context | None = None

    def plan(self, total: int) -> list[tuple[ts.Context, int]]:
        """(ring, slots) for each ciphertext of a vector of ``total`` slots: large ones while the rest
        does not fit in one small ciphertext, then a small one."""
        chunks, rest = [], total
        large, small = _slots(self.large), _slots(self.small) if self.small is not None else 0
        while rest > 0:
            if rest <= small:
                chunks.append((self.small, rest))
                break
            chunks.append((self.large, min(large, rest)))
            rest -= min(large, rest)
        return chunks

    def has_secret_key(self) -> bool:
        return self.large.has_secret_key() and (self.small is None or self.small.has_secret_key())

    def serialize(self, *, secret: bool = False) -> bytes:
        rings = [self.large] if self.small is None else [self.large, self.small]
        return _MAGIC + pack([ring.serialize(save_public_key=True, save_secret_key=secret, save_galois_keys=False,
                                             save_relin_keys=False) for ring in rings])


def load_packed_context(blob: bytes, *, secret: bool = False) -> PackedContext:
    """The packed contexts from their bytes (a lone BFV context: a key holder made before ring choice).

    Raises
    ------
    PrivacyError
        If a public context (``secret`` False) carries a secret key, or a secret one lacks it.
    CiphertextError
        If the bytes are not packed contexts.
    """
    try:
        parts = unpack(blob[len(_MAGIC):]) if blob.startswith(_MAGIC) else [blob]
        rings = [ts.context_from(part) for part in parts]
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CiphertextError(f"not a packed context ({exc})") from exc
    if not 1 <= len(rings) <= 2 or any(not _is_bfv(ring) for ring in rings):
        raise CiphertextError("not a packed context: expected one or two BFV contexts")
    for ring in rings:
        if ring.has_secret_key() != secret:
            raise PrivacyError("refusing a packed context that carries a secret key" if not secret
                               else "decrypting needs the secret key")
    return PackedContext(rings[0], rings[1] if len(rings) == 2 else None)


def make_packed_context() -> PackedContext:
    """The key holder's BFV contexts, both rings (with their secret keys): made once, at ``keyholder init``."""
    t = PackedParams().plain_modulus
    large, small = PackedParams(), SMALL_RING
    return PackedContext(*(ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=p.poly_modulus_degree, plain_modulus=t,
                                      coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes)) for p in (large, small)))


def _plain_modulus() -> int:
    """The protocol's ``t`` (TenSEAL does not expose a context's own): a context made with another ``t``
    decrypts to sums whose tags do not check, so a mismatch is refused, never released."""
    return PackedParams().plain_modulus


def _is_bfv(context: ts.Context) -> bool:
    return str(context.seal_context().data.key_context_data().parms().scheme()).endswith("BFV")


def _slots(context: ts.Context) -> int:
    return context.seal_context().data.key_context_data().parms().poly_modulus_degree()


def packing_bound(flat: np.ndarray) -> float:
    """The round's bound on each site's change ``|theta_i - g|`` from the global model ``g`` it was sent:
    twice ``g``'s largest value, a power of 2, at least 2^-4; ``ZERO_BOUND`` (8) for a model
    that is all zero (round 1 of a zero-initialised one: nothing to scale by).

    A public function of what every site receives alike, so the coordinator cannot pick a bound per site
    (each site recomputes it and refuses another, ``node_agent.client_app``)."""
    largest = float(np.max(np.abs(flat))) if np.size(flat) else 0.0
    if not largest > 0.0:
        return ZERO_BOUND
    return float(2.0 ** max(MIN_BOUND_BITS, math.ceil(math.log2(2.0 * largest))))


def step_of(bound: float) -> float:
    return float(bound) / 2.0**_FRACTION_BITS


def max_error(bound: float, sites: int) -> float:
    """The largest error of a decrypted packed sum of ``sites`` replies (stochastic rounding only: each
    site's value moves by less than one step)."""
    return sites * step_of(bound)


def packed_length(n_values: int) -> int:
    """Data slots for ``n_values`` values and the weight: two values per slot, then the weight slot."""
    return (n_values + 1) // 2 + 1


def _mac(label: QueryLabel, length: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(b"packed-a|" + label.canonical(with_dp=False)).digest()[:16], "little")
    return np.random.default_rng(seed).integers(1, 1 << 20, size=(TAG_SLOTS, length), dtype=np.int64)


def _offsets(site_key: bytes, label: QueryLabel, t: int) -> list[int]:
    digest = hmac.new(site_key, b"packed-b|" + label.canonical(), hashlib.sha256).digest()
    return [int.from_bytes(digest[8 * k : 8 * k + 8], "little") % t for k in range(TAG_SLOTS)]


def _dot_mod(a: np.ndarray, slots: np.ndarray, t: int) -> list[int]:
    """``a @ slots mod t`` exactly: |a| < 2^20 and 0 <= slots < 2^38 keep each product below 2^58."""
    residues = np.mod(slots, t).astype(np.int64)
    if residues.size >= 1 << 25:  # the int64 sum of as many products below 2^38 could overflow
        raise ValueError("too many slots for one packed vector")
    return [int(np.sum((row * residues) % t, dtype=np.int64) % t) for row in a]


def _tags(slots: np.ndarray, site_key: bytes, label: QueryLabel, t: int) -> list[int]:
    macs = _dot_mod(_mac(label, slots.size), slots, t)
    return [(m + b) % t for m, b in zip(macs, _offsets(site_key, label, t))]


def _rounding(site_key: bytes, label: QueryLabel) -> np.random.Generator:
    """Stochastic rounding for one query, seeded by HMAC of it under the site's key (unbiased, not a privacy
    mechanism: the site can repeat it, nobody else can predict it)."""
    digest = hmac.new(site_key, b"packed-rounding|" + label.canonical(), hashlib.sha256).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _lanes(values: np.ndarray, step: float, rounding: np.random.Generator) -> np.ndarray:
    # Up with probability the fraction, so E[q] = value / step: rounding to the nearest sent 0 for every
    # change below half a step, as a site's weighted change often is.
    scaled = values / step
    low = np.floor(scaled)
    q = (low + (rounding.random(scaled.shape) < scaled - low)).astype(np.int64)
    if q.size % 2:
        q = np.append(q, 0)
    return q[0::2] + q[1::2] * _LANE


def encrypt_packed(context: PackedContext, values: np.ndarray, *, weight: float, bound: float, site_key: bytes,
                   label: QueryLabel) -> bytes:
    """A site's packed reply ``Enc([w * d (two per slot), w, 1, tags])``; ``values`` is ``w * d``, the
    site's weighted change ``d = theta - g`` from the global model (or any vector to be summed).

    Raises
    ------
    SiteDataError
        If a value is not finite, ``weight`` is outside [0, 1], or ``|values| > weight * bound``
        (never clipped here, silently: the node agent clips first and audits it).
    """
    values = np.asarray(values, dtype=float).ravel()
    if not (np.isfinite(values).all() and math.isfinite(weight)):
        raise SiteDataError("refusing to encrypt non-finite values (NaN or infinity)")
    if not 0.0 <= weight <= 1.0:
        raise SiteDataError(f"a site's weight must lie in [0, 1], not {weight}")
    if values.size and float(np.max(np.abs(values))) > weight * bound + 1e-12:
        raise SiteDataError(f"the model holds values beyond the round's packing bound ±{bound:g}: not sent "
                            "(a bound is never clipped silently)")
    t = _plain_modulus()
    data = np.append(_lanes(values, step_of(bound), _rounding(site_key, label)),
                     np.int64(round(weight * WEIGHT_SCALE)))
    tags = _tags(data, site_key, label, t)
    centred = [x - t if x > t // 2 else x for x in tags]
    slots = [int(x) for x in data] + [1] + centred
    chunks, start = [], 0
    for ring, size in context.plan(len(slots)):
        chunks.append(ts.bfv_vector(ring, slots[start : start + size]).serialize())
        start += size
    return pack(chunks)


def read_packed(context: PackedContext, blob: bytes, *, length: int | None = None) -> list[ts.BFVVector]:
    """A packed reply's ciphertexts, checked (``length``: the data slots, without the trailer): each
    chunk in the ring the plan gives its place, so a sum never mixes rings."""
    chunks = unpack(blob)
    if length is not None:
        plan = context.plan(length + 1 + TAG_SLOTS)
    else:  # the ring of each chunk follows from the total, which the chunks' sizes give
        plan = [(context.large, 0)] * len(chunks)
    if len(plan) != len(chunks):
        raise CiphertextError(f"holds {len(chunks)} ciphertexts, expected {len(plan)}")
    vectors = []
    for i, (chunk, (ring, _)) in enumerate(zip(chunks, plan, strict=True)):
        try:
            vectors.append(ts.bfv_vector_from(ring, chunk))
        except Exception as exc:  # TenSEAL raises ValueError or RuntimeError, by cause
            raise CiphertextError(f"chunk {i} is not a BFV ciphertext under the packed context ({exc})") from exc
    if length is not None and [v.size() for v in vectors] != [size for _, size in plan]:
        raise CiphertextError(f"holds {[v.size() for v in vectors]} values per chunk, "
                              f"expected {[size for _, size in plan]}")
    return vectors


def decrypt_packed(secret: PackedContext, blob: bytes, *, length: int) -> np.ndarray:
    """The decrypted slots of a packed sum of ``length`` data slots, centred in (-t/2, t/2] (key holder only)."""
    if not secret.has_secret_key():
        raise PrivacyError("decrypting needs the secret key")
    t = _plain_modulus()
    try:
        chunks, plan = unpack(blob), secret.plan(length + 1 + TAG_SLOTS)
        if len(chunks) != len(plan):
            raise ValueError(f"{len(chunks)} ciphertexts, expected {len(plan)}")
        slots = np.concatenate([np.asarray(ts.bfv_vector_from(ring, c).decrypt(), dtype=np.int64)
                                for c, (ring, _) in zip(chunks, plan, strict=True)])
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CiphertextError("the sum is not a ciphertext under this key holder's packed context") from exc
    slots = np.mod(slots, t)
    return np.where(slots > t // 2, slots - t, slots)


def check_packed_tags(slots: np.ndarray, *, length: int, site_keys: Mapping[str, bytes], label: QueryLabel,
                      t: int, site_dp: Mapping[str, float] | None = None) -> None:
    """Raise ``AggregateCheckError`` unless the sum holds exactly the claimed sites' tagged replies."""
    if slots.size != length + 1 + TAG_SLOTS:
        raise AggregateCheckError(f"expected {length} data slots and a trailer of {1 + TAG_SLOTS}, got {slots.size}")
    data, count, tags = slots[:length], int(slots[length]), slots[length + 1 :]
    if count != len(site_keys):
        raise AggregateCheckError(f"the contributor slot counts {count}, not the {len(site_keys)} site(s) claimed")
    dp = site_dp or {}
    macs = _dot_mod(_mac(label, length), data, t)
    expected = list(macs)
    for site, key in site_keys.items():
        offsets = _offsets(key, replace(label, dp_epsilon=dp.get(site, label.dp_epsilon)), t)
        expected = [(e + b) % t for e, b in zip(expected, offsets)]
    if [int(x) % t for x in tags] != expected:
        raise AggregateCheckError(
            f"the sum's tags do not match the {len(site_keys)} site(s) claimed: a reply added twice, left out, "
            "masked, replayed or forged, or made under another key; not released")


def check_weight_sum(slots: np.ndarray, *, length: int, sites: int) -> float:
    """The decrypted weight sum; refused above 1 (each site rounds its weight by at most half a unit)."""
    if sites > MAX_SITES:
        raise AggregateCheckError(f"a packed sum covers at most {MAX_SITES} sites, not {sites}")
    total = float(slots[length - 1]) / WEIGHT_SCALE
    if total < 0:
        raise AggregateCheckError(f"the weights sum to {total:.6g} < 0: not a sum of sites' weights")
    if total > 1.0 + sites / WEIGHT_SCALE:
        raise AggregateCheckError(f"the weights sum to {total:.6g} > 1: the sites were sent inflated weights; "
                                  "the lanes may have overflowed, nothing is released")
    return total


def unpack_values(slots: np.ndarray, *, n_values: int, bound: float) -> np.ndarray:
    """``[sum(w_i * d_i) (n_values), sum(w_i)]`` as floats from the decrypted data slots."""
    data = np.asarray(slots, dtype=np.int64)
    lanes, weight = data[:-1], data[-1]
    low = ((lanes + _LANE // 2) % _LANE) - _LANE // 2
    high = (lanes - low) // _LANE
    q = np.empty(2 * lanes.size, dtype=np.int64)
    q[0::2], q[1::2] = low, high
    return np.append(q[:n_values] * step_of(bound), weight / WEIGHT_SCALE)
