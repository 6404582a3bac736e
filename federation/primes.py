"""Primes for BFV batching (``federation.packing``): ``t`` must be a prime that is 1 modulo 2N."""

from __future__ import annotations

import functools

__all__ = ["batching_prime", "is_prime"]


def is_prime(n: int) -> bool:
    """Miller-Rabin with the first 12 primes as bases: exact for n < 3.3e24."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in small:  # deterministic for n < 3.3e24
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


@functools.lru_cache(maxsize=8)
def batching_prime(bits: int, degree: int) -> int:
    """The largest prime below 2^bits that is 1 modulo 2N (BFV batching needs it)."""
    k = (1 << bits) // (2 * degree)
    while not is_prime(k * 2 * degree + 1):
        k -= 1
    return k * 2 * degree + 1
