"""Authenticated contributions: every encrypted vector carries tags that bind it to its site, its
data and one query (run, phase, round), checked by the key holder after decrypting the sum.

Why: the aggregator holds the public key, so it can add ``Enc(0)``, add one reply twice, multiply a
reply by a plaintext mask slot by slot, or replay an old reply. A contributor slot alone counts
whatever the aggregator makes it count. Each site therefore appends ``TAG_SLOTS`` tags

    tag_k = <a_k, v> + b_k(site key, label)

to its vector ``v`` (``a_k``: public, derived from the label, |a_kj| in [0.25, 0.5] with random
signs; ``b_k``: a secret offset in [-2^12, 2^12] from HMAC-SHA256 of the label under the key only
the site and the key holder share, given at enrolment). Tags add up like the data, so the sum over
a cohort S satisfies

    sum(tag_k) - sum_{i in S} b_k(i) = <a_k, sum(v)>

which the key holder checks after decryption, against the cohort the aggregator *claims*. Every
slot-wise trick of the aggregator breaks the equation: dropping or doubling a site leaves a ``b``
missing or counted twice (unknown to the aggregator); masking a site's data out of some slots
leaves ``a_kj * v_ij`` terms unexplained; a reply from another query has other ``a`` and ``b``. A
forged sum passes only if the aggregator guesses ``TAG_SLOTS`` offsets to within the tolerance:
probability about (tolerance / 2^13) ** TAG_SLOTS, below 1e-17. Sites answer each label once
(``node_agent``), so two replies never share an offset.

The tolerance covers CKKS noise only: about 1.3e3 * 2^-scale per slot and site on average
(measured with TenSEAL at N = 8192; the noisiest slots reach ~3.7x that), ten standard deviations
of the check's error with room for the tag to sit in a slot with 4x the mean noise.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from federation.errors import AggregateCheckError

__all__ = ["TAG_SLOTS", "TRAILER", "QueryLabel", "check_tags", "inputs_digest", "mac_vectors", "offsets",
           "site_tags", "tag_tolerance"]

TAG_SLOTS = 4
# Values after the data in every encrypted vector: the contributor slot (1 per site), then the tags.
TRAILER = 1 + TAG_SLOTS
OFFSET_RANGE = 2.0**12
# Per-slot CKKS noise of one fresh ciphertext, in units of 2^-scale (measured: std 1.2e-9 at 2^40).
_NOISE_PER_SCALE_UNIT = 1.5e3
_SIGMAS = 10.0


@dataclass(frozen=True)
class QueryLabel:
    """What one decryption is for. Sites bind their tags to it; the key holder grants it once.

    ``dp_epsilon`` is the differential-privacy budget the *sites* applied to this release (0: none);
    a coordinator that claims noise the sites did not add fails the tag check. ``inputs`` is the
    digest of the message each site answered (its config and arrays): sites sent different inputs
    (another weight, learning rate or model for some of them) bind different digests, and no single
    claimed label makes their tags add up, so such a sum is never released.
    """

    run_id: str
    phase: str  # "stats", "train" or "calibrate"
    round: int
    task: str
    dp_epsilon: float = 0.0
    inputs: str = ""  # SHA-256 of what the site was sent for this query (``inputs_digest``)

    def canonical(self, *, with_dp: bool = True) -> bytes:
        """The label as bytes; the public ``a`` leaves out the DP level, which each site binds to its own offsets."""
        base = f"fenji-query-v1|{self.run_id}|{self.phase}|{self.round}|{self.task}|{self.inputs}"
        return (f"{base}|{float(self.dp_epsilon):.6g}" if with_dp else base).encode()

    @property
    def kind(self) -> str:
        """The kind of query (task and phase), recorded in the ledger; its differencing rule spans all kinds."""
        return f"{self.task}:{self.phase}"

    @property
    def once_key(self) -> str:
        """At most one decryption per (run, phase, round)."""
        return f"{self.run_id}|{self.phase}|{self.round}"

    def to_dict(self) -> dict:
        return asdict(self)


def mac_vectors(label: QueryLabel, length: int) -> np.ndarray:
    """The public ``a_k`` (``TAG_SLOTS`` x ``length``), derived from the label alone."""
    seed = int.from_bytes(hashlib.sha256(b"a|" + label.canonical(with_dp=False)).digest()[:16], "little")
    rng = np.random.default_rng(seed)
    magnitude = rng.uniform(0.25, 0.5, size=(TAG_SLOTS, length))
    return np.where(rng.random((TAG_SLOTS, length)) < 0.5, -magnitude, magnitude)


def offsets(site_key: bytes, label: QueryLabel) -> np.ndarray:
    """The secret ``b_k`` of one site for one label (only the site and the key holder can compute it)."""
    digest = hmac.new(site_key, b"b|" + label.canonical(), hashlib.sha256).digest()
    words = np.frombuffer(digest, dtype="<u8")[:TAG_SLOTS].astype(float)
    return (words / 2.0**64 * 2.0 - 1.0) * OFFSET_RANGE


def site_tags(values: np.ndarray, site_key: bytes, label: QueryLabel) -> np.ndarray:
    """The tags a site appends to ``values`` (after the contributor slot)."""
    values = np.asarray(values, dtype=float).ravel()
    return mac_vectors(label, values.size) @ values + offsets(site_key, label)


def tag_tolerance(*, length: int, sites: int, scale_bits: int) -> float:
    """How far an honest sum's tag check may be off: CKKS noise, ``_SIGMAS`` standard deviations."""
    per_slot = _NOISE_PER_SCALE_UNIT * 2.0**-scale_bits * math.sqrt(max(sites, 1))
    # The tag's own slot may be one of the noisiest (measured: up to ~3.7x the mean): room for 4x there.
    return _SIGMAS * per_slot * math.sqrt(0.2 * length + 16.0)


def check_tags(values: np.ndarray, tags: np.ndarray, *, site_keys: Mapping[str, bytes] | Sequence[bytes],
               label: QueryLabel, scale_bits: int, site_dp: Mapping[str, float] | None = None) -> None:
    """Raise ``AggregateCheckError`` unless ``tags`` are the sum of the claimed sites' tags of ``values``.

    ``values`` is the decrypted data part of the sum (without the trailer), ``site_keys`` the keys
    of the sites the aggregator claims it summed. ``site_dp`` gives the DP epsilon each site (by
    id, with ``site_keys`` a mapping) declared it applied; a site not named there is taken at the
    label's own ``dp_epsilon``.
    """
    if isinstance(site_keys, Mapping):
        dp = site_dp or {}
        pairs = [(k, replace(label, dp_epsilon=dp.get(s, label.dp_epsilon))) for s, k in site_keys.items()]
    else:
        pairs = [(k, label) for k in site_keys]
    keys = [k for k, _ in pairs]
    expected = mac_vectors(label, values.size) @ values + sum(offsets(k, lab) for k, lab in pairs)
    error = np.abs(np.asarray(tags, dtype=float) - expected)
    tolerance = tag_tolerance(length=values.size, sites=len(keys), scale_bits=scale_bits)
    if not np.all(error <= tolerance):  # also false for NaN
        raise AggregateCheckError(
            f"the sum's tags do not match the {len(keys)} site(s) claimed: a reply added twice, left out, masked, "
            "replayed or forged, or made under another key; not released"
        )


def inputs_digest(config: Mapping[str, object], arrays: Sequence[np.ndarray] = ()) -> str:
    """SHA-256 of a query's inputs: its config (canonical JSON, bytes as hex) and its arrays."""
    digest = hashlib.sha256()
    plain = {k: (v.hex() if isinstance(v, bytes | bytearray) else v) for k, v in sorted(config.items())}
    digest.update(json.dumps(plain, sort_keys=True, default=str).encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
