"""Encryption overhead: the same sites, the same model, one FedAvg round with and without CKKS.

A round is measured in its parts, in one run: local training (sites train in parallel, so the
slowest site counts), the site's work on its update (serialise float32; or check the key holder's
signature on the public context, digest the round's inputs and encrypt with tags bound to that
digest, as ``node_agent.client_app`` does), the aggregator's sum, and the decryption by
the key holder's own service over HTTP (``keyholder.process``), with every rule of the protocol:
enrolled sites, a bearer token, one decryption per query, tags checked. Bytes are what one site
sends per round.

The ``checks`` block of each size says what the authenticated protocol (issue 12) adds:

- per site: computing the tags (``site_tags``), verifying the signed public context
  (``verify_context``), digesting the round's inputs (``inputs_digest``: its config, which carries
  the public context, and the global model), and the bytes the tags add to the ciphertext;
- per round: the key holder's checks (its in-process ``decrypt_aggregate`` minus a bare TenSEAL
  decryption of the same sum) and the HTTP hop (the service's answer minus the in-process one).

The in-process key holder reads a copy of the service's state folder, taken before the service
starts: its sites, keys and rules are the same, its ledger is its own. So it decrypts the very sum
the service decrypts, under the same label (the tags bind the label, so a sum cannot be decrypted
under another one), and neither ledger sees the query twice.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tenseal as ts
import torch
from torch import nn

from bench.common import environment, save_figure, spread, subplots
from bench.he_variants import NVFLARE_CKKS, nvflare_context, nvflare_round, packed_round
from coordinator.aggregator import Aggregator
from coordinator.keyholder_client import KeyHolderClient
from federation.crypto import (
    CKKSParams,
    chunk_sizes,
    encrypt_contribution,
    load_public_context,
    slot_count,
    unpack,
)
from federation.identity import verify_context
from federation.keyholder_api import DecryptRequest
from federation.tags import TRAILER, QueryLabel, inputs_digest, site_tags
from keyholder.key_holder import KeyHolder
from keyholder.packed import ensure_packed, packed_public_context, packed_signature
from keyholder.process import start_key_holder_service
from keyholder.state import KeyHolderState

__all__ = ["plot", "run", "trailer_bytes"]

# Hidden widths giving about 1k, 100k and 1M parameters on 40 inputs.
MODELS = {1_000: [24], 100_000: [256, 256, 88], 1_000_000: [1024, 768, 256]}
TASK = "he-overhead"
CALLER = "bench-coordinator"


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


def trailer_bytes(blob: bytes, *, length: int, slots: int) -> int:
    """Bytes the tags add to ``blob`` (``length`` data values and the trailer) compared with the same
    data and its contributor slot alone, the vector sites sent before tags.

    Ciphertexts are whole: while the tags fit in the last chunk's free slots they cost nothing;
    otherwise each extra chunk costs its serialised size and its 8-byte length in the header.
    """
    tagged, untagged = len(chunk_sizes(length + TRAILER, slots)), len(chunk_sizes(length + 1, slots))
    chunks = unpack(blob)
    if len(chunks) != tagged:
        raise ValueError(f"{len(chunks)} chunk(s) for {length} values and the trailer, expected {tagged}")
    return sum(len(chunk) + 8 for chunk in chunks[untagged:])


def _bare_decrypt(secret: ts.Context, blob: bytes) -> np.ndarray:
    """Deserialise and decrypt ``blob`` with no rule at all: what decryption costs by itself."""
    return np.concatenate([np.asarray(ts.ckks_vector_from(secret, chunk).decrypt()) for chunk in unpack(blob)])


def _timed(fn: Callable[..., object], *args, **kwargs) -> tuple[object, float]:
    """``fn(*args, **kwargs)`` and the seconds it took."""
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0


def run(
    *, sizes: Sequence[int] = (1_000, 100_000, 1_000_000), sites: int = 10, repeats: int = 3,
    rows: int = 400, epochs: int = 1, params: CKKSParams | None = None, workdir: Path | None = None,
    progress=None,
) -> dict:
    """Measure every size ``repeats`` times; ``workdir`` keeps the key holder's folders (default: a
    temporary folder, removed at the end)."""
    params = params or CKKSParams()
    min_sites = min(3, sites)
    # Timings on a shared machine say little; the load around the run says how shared it was.
    load_before = list(os.getloadavg())
    # One thread per site's training: with more, torch's threads spin against any other busy process
    # (40x slower for the 1k model at a load of 2 on 2 cores), which would inflate the plaintext round.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = _run(sizes=sizes, sites=sites, repeats=repeats, rows=rows, epochs=epochs, params=params,
                      min_sites=min_sites, workdir=workdir, progress=progress)
    finally:
        torch.set_num_threads(threads)
    report["load_average"] = {"before": load_before, "after": list(os.getloadavg())}
    return report


def _run(*, sizes: Sequence[int], sites: int, repeats: int, rows: int, epochs: int, params: CKKSParams,
         min_sites: int, workdir: Path | None, progress) -> dict:
    with tempfile.TemporaryDirectory(prefix="fenji-he-overhead-") as tmp:
        base = Path(workdir or tmp)
        state = KeyHolderState(base / "keyholder")
        state.init(params)
        ensure_packed(state)  # before the copy: the in-process key holder shares every key
        enrolments = [state.enrol(f"site-{i:03d}", f"BENCH-{i:03d}") for i in range(sites)]
        token = state.issue_token(CALLER)
        # Same keys, sites and rules; a ledger of its own (see the module's docstring).
        shutil.copytree(state.home, base / "keyholder-in-process")
        in_process = KeyHolder(KeyHolderState(base / "keyholder-in-process"), min_sites=min_sites)
        secret = KeyHolderState(base / "keyholder-in-process").secret_context()
        public, signature = state.public_context(), state.context_signature()
        packed = {"packed_public": packed_public_context(state), "packed_signature": packed_signature(state)}
        nvflare = nvflare_context()
        with start_key_holder_service(state.home, min_sites=min_sites) as service:
            client = KeyHolderClient(service.url, token)
            try:
                results = [_measure(size, enrolments=enrolments, public=public, signature=signature,
                                    client=client, in_process=in_process, secret=secret, repeats=repeats,
                                    rows=rows, epochs=epochs, progress=progress, packed=packed, nvflare=nvflare)
                           for size in sizes]
            finally:
                client.close()
    return {
        "benchmark": "he-overhead",
        "inputs": {"sizes": list(sizes), "sites": sites, "repeats": repeats, "rows_per_site": rows,
                   "local_epochs": epochs, "torch_threads": 1, "ckks": {"poly_modulus_degree": params.poly_modulus_degree,
                                                    "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
                                                    "scale_bits": params.scale_bits},
                   "public_context_bytes": len(public), "min_sites": min_sites,
                   "decryption": "key holder service over HTTP on loopback (python -m keyholder serve)"},
        "environment": environment(),
        "results": results,
        "anchors": {"nvflare_he_wall_time_ratio": 2.7, "nvflare_he_message_ratio": 15,
                    "tenseal_defaults_8192_60_40_40_60_ratio": 20.7},
        "goals": {"round_time_ratio_max": 1.1, "bytes_ratio_max": 2.0},
        "nvflare_ckks": NVFLARE_CKKS,
    }


def _measure(size: int, *, enrolments, public: bytes, signature: bytes, client: KeyHolderClient,
             in_process: KeyHolder, secret: ts.Context, repeats: int, rows: int, epochs: int, progress,
             packed: dict, nvflare: tuple) -> dict:
    """One model size: ``repeats`` rounds, plaintext and encrypted, and the checks' share of them."""
    rng = np.random.default_rng(size)
    sites = len(enrolments)
    context = load_public_context(public)
    aggregator = Aggregator(public)
    cohort = [e.site_id for e in enrolments]
    hidden = MODELS.get(size) or [max(size // 42, 1)]
    model = _mlp(40, hidden)
    n_params = sum(p.numel() for p in model.parameters())
    flat = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    updates = [flat + rng.normal(0, 0.01, n_params) for _ in range(sites)]
    weights = rng.integers(50, 1000, sites).astype(float)
    weights /= weights.sum()
    # What a site encrypts in a train round: its weighted update and its weight (coordinator.server_app).
    vectors = [np.append(w * u, w) for w, u in zip(weights, updates)]
    exact = np.sum(vectors, axis=0)
    plain, enc, train_s, errors, plain_bytes, enc_bytes = [], [], [], [], 0, 0
    tags_s, verify_s, digest_s, kh_checks, http_hop, bare_s, inproc_s, extra = [], [], [], [], [], [], [], 0
    global_model = flat.astype(np.float64)  # as the coordinator sends it (models.nets.get_flat)
    variants: dict[str, list[dict]] = {"packed": [], "nvflare": []}
    for repeat in range(repeats):
        train_s.append(_train_seconds(model, rows, epochs))
        t0 = time.perf_counter()
        payloads = [(w * u).astype(np.float32).tobytes() for w, u in zip(weights, updates)]
        site_plain = (time.perf_counter() - t0) / sites
        t0 = time.perf_counter()
        np.sum([np.frombuffer(p, dtype=np.float32) for p in payloads], axis=0)
        plain.append({"site": site_plain, "aggregate": time.perf_counter() - t0, "decrypt": 0.0})
        plain_bytes = len(payloads[0])

        # A fresh run id each repeat: the key holder decrypts one sum per (run, phase, round).
        run_id = f"bench-{size}-{repeat}"
        # What every site is sent this round (the public context travels in it): its digest goes into the tags.
        config = {"run-id": run_id, "server-round": 1, "task-name": TASK, "ckks-context": public,
                  "ckks-context-signature": signature, "total-examples": 1000}
        blobs, site_enc = [], 0.0
        for enrolment, values in zip(enrolments, vectors):
            key = enrolment.site_key_bytes
            _, verify = _timed(verify_context, public, signature, enrolment.verify_key_bytes)
            digest, digesting = _timed(inputs_digest, config, [global_model])
            label = QueryLabel(run_id=run_id, phase="train", round=1, task=TASK, inputs=digest)
            # The tags alone (also computed inside encrypt_contribution, where the round counts them).
            tags_s.append(_timed(site_tags, values, key, label)[1])
            blob, encrypt = _timed(encrypt_contribution, context, values, site_key=key, label=label)
            verify_s.append(verify)
            digest_s.append(digesting)
            site_enc += verify + digesting + encrypt
            blobs.append(blob)
        summed, agg_enc = _timed(aggregator.add, blobs, length=n_params + 1, scale_bits=aggregator.scale_bits)
        request = DecryptRequest.of(label, cohort=cohort, length=n_params + 1, scale_bits=aggregator.scale_bits)
        _, bare = _timed(_bare_decrypt, secret, summed)
        _, inproc = _timed(in_process.decrypt_aggregate, summed, request, caller="bench-in-process")
        values, dec = _timed(client.decrypt_aggregate, summed, request)
        bare_s.append(bare)
        inproc_s.append(inproc)
        kh_checks.append(inproc - bare)
        http_hop.append(dec - inproc)
        enc.append({"site": site_enc / sites, "aggregate": agg_enc, "decrypt": dec})
        enc_bytes = len(blobs[0])
        extra = trailer_bytes(blobs[0], length=n_params + 1, slots=slot_count(context))
        errors.append(float(np.max(np.abs(np.asarray(values) - exact))))
        variants["packed"].append(packed_round(enrolments=enrolments, public=public, client=client, weights=weights,
                                               updates=updates, global_model=global_model, run_id=f"{run_id}-packed",
                                               task=TASK, **packed))
        variants["nvflare"].append(nvflare_round(*nvflare, vectors))
        if progress:
            progress()
    round_plain = [t + p["site"] + p["aggregate"] for t, p in zip(train_s, plain)]
    round_enc = [t + e["site"] + e["aggregate"] + e["decrypt"] for t, e in zip(train_s, enc)]
    median = statistics.median
    # Sites work in parallel: a round pays one site's checks and the key holder's once. Medians over
    # the round's median, so that the share agrees with the figures printed next to it.
    checks_in_round = median(tags_s) + median(verify_s) + median(digest_s) + median(kh_checks) + median(http_hop)
    return {
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
        "variants": {name: _variant(rounds, train_s, round_plain, plain_bytes) for name, rounds in variants.items()},
        "checks": {
            "per_site": {"tags_seconds": median(tags_s), "verify_signature_seconds": median(verify_s),
                         "inputs_digest_seconds": median(digest_s),
                         "trailer_bytes": extra},
            "per_round": {"keyholder_checks_seconds": median(kh_checks), "http_hop_seconds": median(http_hop),
                          "decrypt_bare_seconds": median(bare_s), "decrypt_in_process_seconds": median(inproc_s),
                          "share_of_encrypted_round": checks_in_round / median(round_enc)},
        },
    }


def _variant(rounds: list[dict], train_s: list[float], round_plain: list[float], plain_bytes: int) -> dict:
    """A variant's round in the same terms as Fenji's CKKS round (local training shared)."""
    whole = [t + r["site"] + r["aggregate"] + r["decrypt"] for t, r in zip(train_s, rounds)]
    out = {k: spread([r[k] for r in rounds]) for k in ("site", "aggregate", "decrypt")}
    out |= {"round_seconds": spread(whole), "round_time_ratio": spread([w / p for w, p in zip(whole, round_plain)]),
            "bytes_per_site": rounds[0]["bytes"], "bytes_ratio": rounds[0]["bytes"] / plain_bytes,
            "max_error": spread([r["error"] for r in rounds])}
    if "error_budget" in rounds[0]:
        out |= {"error_budget": rounds[0]["error_budget"], "bound": rounds[0]["bound"]}
    return out


def plot(report: dict, path) -> None:
    rows = report["results"]
    x = [r["parameters"] for r in rows]
    extra = [key for key in ("engine", "coordinator_memory", "scale") if report.get(key)]
    rows_ = 1 + (len(extra) + 1) // 2
    fig, axes = subplots(rows_, 2, figsize=(11, 4 * rows_), squeeze=False)
    axes = list(axes.flat)
    ax, checks = axes[0], axes[1]
    ax.plot(x, [r["round_time_ratio"]["median"] for r in rows], "o-", label="round wall time (encrypted / plaintext)")
    ax.plot(x, [r["bytes_ratio"] for r in rows], "s-", label="bytes per site (CKKS / float32)")
    if all("variants" in r for r in rows):
        ax.plot(x, [r["variants"]["packed"]["bytes_ratio"] for r in rows], "s-", label="bytes per site (packed / float32)")
        ax.plot(x, [r["variants"]["packed"]["round_time_ratio"]["median"] for r in rows], "o-",
                label="round wall time (packed / plaintext)")
        ax.plot(x, [r["variants"]["nvflare"]["bytes_ratio"] for r in rows], "x--", color="grey",
                label="bytes per site (NVFlare's CKKS / float32)")
    if report.get("secagg"):
        anchor = report["secagg"]["results"]
        ax.plot([r["parameters"] for r in anchor], [r["bytes_ratio"] for r in anchor], "+--", color="black",
                label="bytes per site (Flower SecAgg+ / float32)")
        ax.plot([r["parameters"] for r in anchor], [r["round_time_ratio"] for r in anchor], "1--", color="black",
                label="round time (Flower SecAgg+ / plain)")
    ax.axhline(1.1, color="tab:blue", ls=":", lw=1, label="goal: time ≤ 1.1×")
    ax.axhline(2.0, color="tab:orange", ls=":", lw=1, label="goal: bytes ≤ 2×")
    ax.axhline(2.7, color="grey", ls="--", lw=1, label="NVFlare HE anchor: time 2.7×")
    ax.set_xscale("log")
    ax.set_xlabel("model parameters")
    ax.set_ylabel("overhead ratio")
    ax.set_yscale("log")
    ax.set_title(f"Encryption overhead, {report['inputs']['sites']} sites")
    ax.legend(fontsize=7)

    series = [("per_site", "tags_seconds", "tags (per site)", "o-"),
              ("per_site", "verify_signature_seconds", "context signature check (per site)", "v-"),
              ("per_site", "inputs_digest_seconds", "digest of the round's inputs (per site)", "^-"),
              ("per_round", "keyholder_checks_seconds", "key holder's checks (per round)", "s-"),
              ("per_round", "http_hop_seconds", "HTTP hop to the key holder (per round)", "D-")]
    for part, key, label, style in series:
        # A difference of two timings can come out at or below zero for tiny sums; a log axis drops it.
        checks.plot(x, [max(r["checks"][part][key], 1e-6) * 1e3 for r in rows], style, label=label)
    checks.plot(x, [r["round_seconds_encrypted"]["median"] * 1e3 for r in rows], "k--", lw=1,
                label="whole encrypted round")
    checks.set_xscale("log")
    checks.set_yscale("log")
    checks.set_xlabel("model parameters")
    checks.set_ylabel("ms (median)")
    checks.set_title("What the authenticated protocol adds")
    checks.legend(fontsize=7)
    for panel, key in zip(axes[2:], extra, strict=False):
        {"engine": _engine_panel, "coordinator_memory": _memory_panel, "scale": _scale_panel}[key](panel, report[key])
    for unused in axes[2 + len(extra):]:
        unused.set_visible(False)
    fig.tight_layout()
    save_figure(fig, path)


def _engine_panel(ax, engine: dict) -> None:
    """Round time on Flower's engine, per model and mode, against the plaintext round."""
    models = list(dict.fromkeys(p["model"] for p in engine["points"]))
    modes = list(dict.fromkeys(p["mode"] for p in engine["points"]))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        ratios = [next(p["round_time_ratio"] for p in engine["points"] if p["model"] == m and p["mode"] == mode)
                  for m in models]
        ax.bar([j + i * width for j in range(len(models))], ratios, width, label=mode)
    ax.axhline(1.1, color="tab:blue", ls=":", lw=1, label="goal: time ≤ 1.1×")
    ax.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(models))],
                  [f"{m} ({next(p['parameters'] for p in engine['points'] if p['model'] == m):,})" for m in models])
    ax.set_ylabel("median round time / plaintext round")
    ax.set_title("Whole rounds on Flower's engine (demo clinics)")
    ax.legend(fontsize=7)


def _memory_panel(ax, memory: dict) -> None:
    """The coordinator's peak memory for one round, by number of sites and mode."""
    from bench.coordinator_memory import draw

    draw(ax, memory, fontsize=7)
    ax.set_title(f"Coordinator memory, {memory['params']:,} parameters")


def _scale_panel(ax, scale: dict) -> None:
    from bench.scale import draw_time_ratios

    draw_time_ratios(ax, scale)

