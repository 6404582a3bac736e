"""Flower's SecAgg+ as the benchmarks configure it, in one place: the simulation anchor
(``bench.secagg``) and the server-memory replay (``bench.secagg_memory``) run the same protocol."""

from __future__ import annotations

__all__ = ["CLIPPING_RANGE", "MODULUS_RANGE", "NUM_SHARES", "QUANTIZATION_RANGE", "RECONSTRUCTION_THRESHOLD",
           "quantisation_bound"]

# Flower's example app (examples/flower-secure-aggregation): each site shares its keys with 3 sites
# (itself and two neighbours); 2 shares rebuild a key.
NUM_SHARES = 3
RECONSTRUCTION_THRESHOLD = 2
# SecAggPlusWorkflow's defaults, passed explicitly so that the report states what ran.
CLIPPING_RANGE = 8.0
QUANTIZATION_RANGE = 2**22
MODULUS_RANGE = 2**32


def quantisation_bound(*, weight_ratio: float = 1.0) -> float:
    """Largest difference SecAgg+'s aggregate may have from the exact weighted average, per value.

    Each site quantises ``ratio * update`` with stochastic rounding (error under one step of
    ``2 * CLIPPING_RANGE / QUANTIZATION_RANGE``) after shifting it by ``CLIPPING_RANGE`` in float32
    (rounded to an eighth of a step): under 1.125 steps per site; two steps leave room for the
    plain average's own float32 rounding. The unmasked sum is divided by the sum of the sites'
    ratios (``weight_ratio`` each: a site's weight over ``max_weight``), so the sites' count
    cancels. Values clipped at ``CLIPPING_RANGE`` are outside this bound (none are here: the
    models' weights are far below 8).
    """
    step = 2 * CLIPPING_RANGE / QUANTIZATION_RANGE
    return 2 * step / weight_ratio
