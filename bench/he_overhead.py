"""Encryption overhead: the same sites, the same model, one FedAvg round with and without CKKS.

A round is measured in its parts, in one process: local training (sites train in parallel, so the
slowest site counts), the site's work on its update (serialise float32, or encrypt), the
aggregator's sum, and the key holder's decryption. Bytes are what one site sends per round.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from bench.common import environment, save_figure, spread, subplots
from coordinator.aggregator import Aggregator
from federation.crypto import CKKSParams, encrypt_vector, load_public_context
from keyholder.key_holder import KeyHolder

__all__ = ["run"]

# Hidden widths giving about 1k, 100k and 1M parameters on 40 inputs.
MODELS = {1_000: [24], 100_000: [256, 256, 88], 1_000_000: [1024, 768, 256]}


def _mlp(n_inputs: int, hidden: Sequence[int]) -> nn.Module:
    layers: list[nn.Module] = []
    width = n_inputs
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def _train_seconds(model: nn.Module, rows: int, epochs: int) -> float:
    x, y = torch.randn(rows, 40), (torch.rand(rows, 1) < 0.2).float()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    start = time.perf_counter()
    for _ in range(epochs):
        for i in range(0, rows, 64):
            optimiser.zero_grad()
            nn.functional.binary_cross_entropy_with_logits(model(x[i : i + 64]), y[i : i + 64]).backward()
            optimiser.step()
    return time.perf_counter() - start


def run(
    *, sizes: Sequence[int] = (1_000, 100_000, 1_000_000), sites: int = 10, repeats: int = 3,
    rows: int = 400, epochs: int = 1, params: CKKSParams | None = None, progress=None,
) -> dict:
    params = params or CKKSParams()
    key_holder = KeyHolder(min_sites=min(3, sites), params=params)
    context = load_public_context(key_holder.public_context)
    aggregator = Aggregator(key_holder.public_context)
    rng = np.random.default_rng(0)
    results = []
    for size in sizes:
        hidden = MODELS.get(size) or [max(size // 42, 1)]
        model = _mlp(40, hidden)
        n_params = sum(p.numel() for p in model.parameters())
        updates = [np.concatenate([p.detach().numpy().ravel() for p in model.parameters()]) + rng.normal(0, 0.01, n_params)
                   for _ in range(sites)]
        weights = rng.integers(50, 1000, sites).astype(float)
        weights /= weights.sum()
        plain, enc, train_s, errors, plain_bytes, enc_bytes = [], [], [], [], 0, 0
        for _ in range(repeats):
            train_s.append(_train_seconds(model, rows, epochs))
            t0 = time.perf_counter()
            payloads = [(w * u).astype(np.float32).tobytes() for w, u in zip(weights, updates)]
            site_plain = (time.perf_counter() - t0) / sites
            t0 = time.perf_counter()
            total = np.sum([np.frombuffer(p, dtype=np.float32) for p in payloads], axis=0)
            agg_plain = time.perf_counter() - t0
            plain.append({"site": site_plain, "aggregate": agg_plain, "decrypt": 0.0})
            plain_bytes = len(payloads[0])

            t0 = time.perf_counter()
            blobs = [encrypt_vector(context, np.append(w * u, w)) for w, u in zip(weights, updates)]
            site_enc = (time.perf_counter() - t0) / sites
            t0 = time.perf_counter()
            summed = aggregator.add(blobs)
            agg_enc = time.perf_counter() - t0
            t0 = time.perf_counter()
            values = key_holder.decrypt_aggregate(summed, length=n_params + 1)
            dec = time.perf_counter() - t0
            enc.append({"site": site_enc, "aggregate": agg_enc, "decrypt": dec})
            enc_bytes = len(blobs[0])
            exact = np.sum([w * u for w, u in zip(weights, updates)], axis=0)
            errors.append(float(np.max(np.abs(values[:-1] - exact))))
            del total
            if progress:
                progress()
        round_plain = [t + p["site"] + p["aggregate"] for t, p in zip(train_s, plain)]
        round_enc = [t + e["site"] + e["aggregate"] + e["decrypt"] for t, e in zip(train_s, enc)]
        results.append({
            "parameters": n_params, "hidden": hidden,
            "train_seconds": spread(train_s),
            "plaintext": {k: spread([p[k] for p in plain]) for k in ("site", "aggregate")},
            "encrypted": {k: spread([e[k] for e in enc]) for k in ("site", "aggregate", "decrypt")},
            "round_seconds_plaintext": spread(round_plain),
            "round_seconds_encrypted": spread(round_enc),
            "round_time_ratio": spread([e / p for e, p in zip(round_enc, round_plain)]),
            "bytes_per_site_plaintext_float32": plain_bytes,
            "bytes_per_site_encrypted": enc_bytes,
            "bytes_ratio": enc_bytes / plain_bytes,
            "max_decryption_error": spread(errors),
        })
    return {
        "benchmark": "he-overhead",
        "inputs": {"sizes": list(sizes), "sites": sites, "repeats": repeats, "rows_per_site": rows,
                   "local_epochs": epochs, "ckks": {"poly_modulus_degree": params.poly_modulus_degree,
                                                    "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
                                                    "scale_bits": params.scale_bits},
                   "public_context_bytes": len(key_holder.public_context)},
        "environment": environment(),
        "results": results,
        "anchors": {"nvflare_he_wall_time_ratio": 2.7, "nvflare_he_message_ratio": 15,
                    "tenseal_defaults_8192_60_40_40_60_ratio": 20.7},
        "goals": {"round_time_ratio_max": 1.2, "bytes_ratio_max": 4.0},
    }


def plot(report: dict, path) -> None:
    rows = report["results"]
    x = [r["parameters"] for r in rows]
    fig, ax = subplots(figsize=(6, 4))
    ax.plot(x, [r["round_time_ratio"]["median"] for r in rows], "o-", label="round wall time (encrypted / plaintext)")
    ax.plot(x, [r["bytes_ratio"] for r in rows], "s-", label="bytes per site (encrypted / float32)")
    ax.axhline(1.2, color="tab:blue", ls=":", lw=1, label="goal: time ≤ 1.2×")
    ax.axhline(4.0, color="tab:orange", ls=":", lw=1, label="goal: bytes ≤ 4×")
    ax.axhline(2.7, color="grey", ls="--", lw=1, label="NVFlare HE anchor: time 2.7×")
    ax.set_xscale("log")
    ax.set_xlabel("model parameters")
    ax.set_ylabel("overhead ratio")
    ax.set_title(f"CKKS overhead, {report['inputs']['sites']} sites")
    ax.legend(fontsize=7)
    save_figure(fig, path)
