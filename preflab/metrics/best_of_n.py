"""Best-of-n arithmetic: the KL bound and the expected reward of the proxy's pick.

Best-of-n samples n completions and keeps the one a proxy reward scores highest.
``preflab bon`` reports it against n, ``preflab.evaluation`` scores it like a policy and
``preflab compare`` runs it as a method; all three use these functions.
"""

from __future__ import annotations

import math


def kl_bound(n: int) -> float:
    """Upper bound on KL(best-of-n || model) in nats: log n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


def best_of_n_weights(count: int, n: int) -> list[float]:
    """For ``count`` samples ranked by proxy (lowest first), the probability that the i-th is
    the proxy-best of a uniformly random n-subset: C(i-1, n-1) / C(count, n)."""
    if not 1 <= n <= count:
        raise ValueError(f"n must be in [1, {count}], got {n}")
    total = math.comb(count, n)
    return [math.comb(i, n - 1) / total for i in range(count)]


def expected_best(proxy: list[float], others: dict[str, list[float]], n: int) -> dict[str, float]:
    """Expected proxy (and each other reward) of the proxy-best of n, from all the samples."""
    order = sorted(range(len(proxy)), key=lambda i: (proxy[i], -i))  # ties: earlier sample wins
    weights = best_of_n_weights(len(proxy), n)
    out = {"proxy": sum(w * proxy[i] for w, i in zip(weights, order))}
    for name, values in others.items():
        out[name] = sum(w * values[i] for w, i in zip(weights, order))
    return out


__all__ = ["best_of_n_weights", "expected_best", "kl_bound"]
