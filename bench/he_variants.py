"""The other encrypted rounds ``bench.he_overhead`` measures beside Fenji's CKKS round, on the same
sites, weights and updates in the same run:

- **packed**: Fenji's packed updates (``federation.packing``): fixed-point lanes in BFV, tags,
  the streaming sum, and the key holder's service decrypting over HTTP with every rule;
- **nvflare**: a TenSEAL CKKS context as NVFlare configures it (N = 8192, moduli [60, 40, 40],
  scale 2^40, public key at the sites), the weighted update alone, no tags, no checks: the anchor.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import tenseal as ts

from coordinator.aggregator import Aggregator
from coordinator.keyholder_client import KeyHolderClient
from federation.identity import verify_context
from federation.keyholder_api import DecryptRequest
from federation.packing import (
    encrypt_packed,
    load_packed_context,
    max_error,
    packing_bound,
)
from federation.tags import QueryLabel, inputs_digest

__all__ = ["NVFLARE_CKKS", "nvflare_context", "nvflare_round", "packed_round"]

NVFLARE_CKKS = {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 40, 40], "scale_bits": 40}


def nvflare_context() -> tuple[ts.Context, ts.Context]:
    """(secret, public) contexts as NVFlare's HE filters configure TenSEAL."""
    secret = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=NVFLARE_CKKS["poly_modulus_degree"],
                        coeff_mod_bit_sizes=NVFLARE_CKKS["coeff_mod_bit_sizes"])
    secret.global_scale = 2.0 ** NVFLARE_CKKS["scale_bits"]
    public = secret.copy()
    public.make_context_public()
    return secret, public


def nvflare_round(secret: ts.Context, public: ts.Context, vectors: Sequence[np.ndarray]) -> dict:
    """One round with NVFlare's parameters: each site encrypts its weighted update, the server adds
    (all replies held, as NVFlare's aggregator does) and the key's owner decrypts."""
    t0 = time.perf_counter()
    blobs = [ts.ckks_vector(public, v.tolist()).serialize() for v in vectors]
    site = (time.perf_counter() - t0) / len(vectors)
    t0 = time.perf_counter()
    total = ts.ckks_vector_from(public, blobs[0])
    for blob in blobs[1:]:
        total += ts.ckks_vector_from(public, blob)
    summed = total.serialize()
    aggregate = time.perf_counter() - t0
    t0 = time.perf_counter()
    values = np.asarray(ts.ckks_vector_from(secret, summed).decrypt())
    decrypt = time.perf_counter() - t0
    error = float(np.max(np.abs(values - np.sum(vectors, axis=0))))
    return {"site": site, "aggregate": aggregate, "decrypt": decrypt, "bytes": len(blobs[0]), "error": error}


def packed_round(*, enrolments, packed_public: bytes, packed_signature: bytes, public: bytes, client: KeyHolderClient,
                 weights: np.ndarray, updates: Sequence[np.ndarray], global_model: np.ndarray, run_id: str,
                 task: str) -> dict:
    """One round of Fenji's packed protocol, as ``node_agent.client_app`` and ``coordinator.strategy`` run it:
    each site packs its change from ``global_model``; ``error`` is on the decrypted sum of changes."""
    bound = packing_bound(global_model)
    config = {"run-id": run_id, "server-round": 1, "task-name": task, "ckks-context": public,
              "packed-context": packed_public, "packed-context-signature": packed_signature,
              "packing-bound": bound, "total-examples": 1000}
    context = load_packed_context(packed_public)
    blobs, site = [], 0.0
    for enrolment, w, update in zip(enrolments, weights, updates):
        t0 = time.perf_counter()
        verify_context(packed_public, packed_signature, enrolment.verify_key_bytes)
        label = QueryLabel(run_id=run_id, phase="train", round=1, task=task,
                           inputs=inputs_digest(config, [global_model]))
        blobs.append(encrypt_packed(context, w * (update - global_model), weight=float(w), bound=bound,
                                    site_key=enrolment.site_key_bytes, label=label))
        site += time.perf_counter() - t0
    n_params = len(updates[0])
    aggregator = Aggregator(public, packed_public)
    t0 = time.perf_counter()
    running = aggregator.running(length=n_params + 1, packed=True)
    for blob in blobs:
        running.add(blob)
    summed = running.serialize()
    aggregate = time.perf_counter() - t0
    request = DecryptRequest.of(label, cohort=[e.site_id for e in enrolments], length=n_params + 1,
                                scale_bits=40, scheme="packed", bound=bound)
    t0 = time.perf_counter()
    values = np.asarray(client.decrypt_aggregate(summed, request))
    decrypt = time.perf_counter() - t0
    exact = np.append(np.sum([w * (u - global_model) for w, u in zip(weights, updates)], axis=0), np.sum(weights))
    return {"site": site / len(updates), "aggregate": aggregate, "decrypt": decrypt, "bytes": len(blobs[0]),
            "error": float(np.max(np.abs(values - exact))), "error_budget": max_error(bound, len(updates)),
            "bound": bound}
