"""NVFlare's homomorphic-encryption round as its server runs it, for the coordinator-memory sweep.

Modelled on NVIDIA/NVFlare's main branch (read for this module, 2.9.0dev; unchanged in substance
since 2.3), not imported: NVFlare is not a dependency of Fenji.

- **Provisioning** (``nvflare/lighter/impl/he.py``, ``HEBuilder``): one TenSEAL CKKS context,
  N = 8192, moduli [60, 40, 40], scale 2^40, *symmetric* encryption, relinearisation keys. The
  sites get it with its secret key (``client_context.tenseal``), the server without
  (``server_context.tenseal``: relinearisation keys only).
- **The site** (``nvflare/app_opt/he/model_encryptor.py``, ``HEModelEncryptor``): every tensor of
  the model is weighted (by its local iterations) and encrypted on its own, ``ts.ckks_vector``.
  The vectors travel as objects: FOBS's ``CKKSVectorDecomposer`` (``nvflare/app_opt/he/decomposers.py``)
  sends each as ``(vector.serialize(), vector.context().serialize())``, so every tensor carries its
  context (public part, relinearisation keys).
- **The server** (``ScatterAndGather`` with ``HEInTimeAccumulateWeightedAggregator``,
  ``nvflare/app_opt/he/intime_accumulate_model_aggregator.py``): each result is handed to the
  aggregator's ``accept`` as it arrives (``_process_train_result``) and then dropped
  (``client_task.result = None``). Decoding the result recomposes every vector with a context of
  its own (``ts.context_from`` then ``ts.ckks_vector_from``); ``WeightedAggregationHelper.add``
  (``weigh_by_local_iter=False``: the weighting was done at the site) keeps a running total per
  tensor (the first contribution copied where TenSEAL allows it, then ``total + v``) and the sum of the weights;
  ``aggregate`` multiplies each total by ``1 / weight``. The encrypted result is sent back to the
  sites, serialised the same way.

What is left out: NVFlare's transport (its message is received whole before it is decoded: one
result at a time here too) and its logging and bookkeeping (a few small dicts per round).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import tenseal as ts

__all__ = ["NVFLARE_HE", "InTimeAccumulator", "decrypt_mean", "encrypt_result", "provision", "tensor_sizes"]

NVFLARE_HE = {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 40, 40], "scale_bits": 40,
              "encryption_type": "symmetric", "relin_keys": True, "galois_keys": False}
# The tensors of bench.he_overhead's 100k-parameter MLP (40 inputs, hidden 256, 256, 88, one output):
# weights and biases, each its own CKKS vector as HEModelEncryptor makes them.
_MLP_TENSORS = (40 * 256, 256, 256 * 256, 256, 256 * 88, 88, 88 * 1, 1)


def tensor_sizes(params: int) -> list[int]:
    """``params`` values split as the MLP's tensors are (scaled to ``params``, the rest in the
    largest), so that NVFlare encrypts the same update as every other mode, one vector per tensor."""
    if params < 64:  # a toy update: one tensor
        return [params]
    total = sum(_MLP_TENSORS)
    sizes = [max(1, n * params // total) for n in _MLP_TENSORS]
    sizes[sizes.index(max(sizes))] += params - sum(sizes)
    return sizes


def provision() -> tuple[bytes, bytes]:
    """(client, server) contexts as ``HEBuilder`` writes them."""
    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=NVFLARE_HE["poly_modulus_degree"],
                         coeff_mod_bit_sizes=NVFLARE_HE["coeff_mod_bit_sizes"],
                         encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
    context.generate_relin_keys()
    context.global_scale = 2.0 ** NVFLARE_HE["scale_bits"]
    client = context.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False,
                               save_relin_keys=True)
    server = context.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False,
                               save_relin_keys=True)
    return client, server


def encrypt_result(client_context: bytes, update: np.ndarray) -> list[tuple[str, bytes, bytes]]:
    """One site's result as it travels: per tensor, its name, the vector and the vector's context."""
    context = ts.context_from(client_context)
    out, start = [], 0
    for i, size in enumerate(tensor_sizes(update.size)):
        vector = ts.ckks_vector(context, update[start:start + size].tolist())
        out.append((f"layer{i}", vector.serialize(), vector.context().serialize()))
        start += size
    return out


class InTimeAccumulator:
    """The server's side of an NVFlare HE round: ``accept`` each result as it arrives, ``aggregate``
    once at the end (``HEInTimeAccumulateWeightedAggregator`` over ``WeightedAggregationHelper``)."""

    def __init__(self, server_context: bytes) -> None:
        # Loaded at START_RUN by NVFlare's HE components (load_tenseal_context_from_workspace).
        self.server_context = ts.context_from(server_context)
        self.total: dict[str, ts.CKKSVector] = {}
        self.counts: dict[str, float] = {}
        self.contributors: list[str] = []

    def accept(self, name: str, result: Iterable[tuple[str, bytes, bytes]], *, weight: float = 1.0) -> None:
        """Decode ``result`` (every vector with its own context, as FOBS recomposes them) and add it."""
        if name in self.contributors:  # NVFlare discards a second result from the same site
            return
        decoded = {layer: ts.ckks_vector_from(ts.context_from(ctx), vec) for layer, vec, ctx in result}
        for layer, vector in decoded.items():
            if layer not in self.total:
                try:  # as the helper does: a copy, else (a public context cannot copy) the vector itself
                    self.total[layer] = vector.copy()
                except (ValueError, RuntimeError):
                    self.total[layer] = vector
                self.counts[layer] = weight
            else:
                self.total[layer] = self.total[layer] + vector
                self.counts[layer] += weight
        self.contributors.append(name)

    def aggregate(self) -> list[tuple[str, bytes, bytes]]:
        """The weighted mean, encrypted, serialised as it is sent back to the sites."""
        out = []
        for layer, total in self.total.items():
            mean = total * (1.0 / self.counts[layer])
            out.append((layer, mean.serialize(), mean.context().serialize()))
        self.total, self.counts, self.contributors = {}, {}, []
        return out


def decrypt_mean(client_context: bytes, result: Sequence[tuple[str, bytes, bytes]]) -> np.ndarray:
    """The sites' view of the aggregate (they hold the secret key): the flat decrypted mean."""
    context = ts.context_from(client_context)
    return np.concatenate([np.asarray(ts.ckks_vector_from(context, vec).decrypt()) for _, vec, _ in result])
