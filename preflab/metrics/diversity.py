"""Output diversity: distinct-n and expectation-adjusted distinct (EAD), per input and across inputs.

Following Kirk et al. (2024), a diversity metric is applied two ways to samples grouped by
prompt (``groups[i]`` = the samples of prompt i):

- **per-input**: the metric over the N samples of one prompt, averaged over prompts (how
  varied are the answers to one question);
- **across-input**: the metric over one sample per prompt (the first of each group; how
  varied are the answers across questions).

Metrics, over a set of texts (strings are split on whitespace; token-id or word lists are
taken as they are):

- ``distinct_n(texts, n)`` = unique n-grams / total n-grams, pooled over the texts. Given
  several orders (the default, n = 1..5) it is their mean, over the orders for which the
  texts hold at least one n-gram (texts shorter than 5 tokens still get a score).
- ``ead(texts, vocab_size, n)`` = unique / (V (1 - ((V - 1) / V) ** C)), C the total number
  of n-grams (Liu et al. 2022): unique n-grams over the number expected from C uniform draws
  from V possibilities, which removes distinct-n's bias against long outputs. For n-grams we
  take V = vocab_size ** n, the number of possible n-grams (for n = 1 this is the formula as
  published; with V = vocab_size for every n, EAD of n >= 2 can exceed 1).
  Averaged over n = 1..5 by default, as ``distinct_n`` is.

Imports only the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence

NS = (1, 2, 3, 4, 5)
Text = str | Sequence[Hashable]


def _tokens(text: Text) -> Sequence[Hashable]:
    return text.split() if isinstance(text, str) else text


def _counts(texts: Sequence[Text], n: int) -> tuple[int, int]:
    """(unique n-grams, total n-grams) pooled over ``texts``."""
    seen: set[tuple] = set()
    total = 0
    for text in texts:
        tokens = list(_tokens(text))
        for i in range(len(tokens) - n + 1):
            seen.add(tuple(tokens[i : i + n]))
            total += 1
    return len(seen), total


def _ns(n: int | Sequence[int]) -> tuple[int, ...]:
    ns = (n,) if isinstance(n, int) else tuple(n)
    if not ns or any(k < 1 for k in ns):
        raise ValueError(f"n-gram orders must be integers >= 1, got {n!r}")
    return ns


def _average(texts: Sequence[Text], ns: tuple[int, ...], score: Callable) -> float:
    """Mean of ``score(unique, total, n)`` over the orders with at least one n-gram."""
    values = []
    for k in ns:
        unique, total = _counts(texts, k)
        if total:
            values.append(score(unique, total, k))
    return sum(values) / len(values) if values else 0.0


def distinct_n(texts: Sequence[Text], n: int | Sequence[int] = NS) -> float:
    """Unique n-grams over total n-grams; for several orders (default 1..5) their mean.

    Orders with no n-gram in ``texts`` are left out of the mean; 0.0 when there are none.
    """
    return _average(texts, _ns(n), lambda unique, total, k: unique / total)


def _expected_unique(space: float, draws: int) -> float:
    """V (1 - ((V - 1) / V) ** C), computed stably for large V."""
    if space <= 1:
        return 1.0
    return -space * math.expm1(draws * math.log1p(-1.0 / space))


def ead(texts: Sequence[Text], vocab_size: int, n: int | Sequence[int] = NS) -> float:
    """Expectation-adjusted distinct-n with V = vocab_size ** n; averaged like ``distinct_n``."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    return _average(texts, _ns(n),
                    lambda unique, total, k: unique / _expected_unique(float(vocab_size) ** k,
                                                                      total))


def per_input(groups: Sequence[Sequence[Text]], metric: Callable[[Sequence[Text]], float]):
    """``metric`` over each prompt's samples, averaged over prompts (empty groups skipped)."""
    values = [metric(group) for group in groups if len(group)]
    return sum(values) / len(values) if values else 0.0


def across_input(groups: Sequence[Sequence[Text]], metric: Callable[[Sequence[Text]], float]):
    """``metric`` over the first sample of each prompt."""
    return metric([group[0] for group in groups if len(group)])


def diversity_report(groups: Sequence[Sequence[Text]], vocab_size: int | None = None) -> dict:
    """distinct-n (and EAD when ``vocab_size`` is given), per input and across inputs."""
    report = {
        "distinct_n/per_input": per_input(groups, distinct_n),
        "distinct_n/across_input": across_input(groups, distinct_n),
    }
    if vocab_size is not None:
        def metric(texts):
            return ead(texts, vocab_size)

        report["ead/per_input"] = per_input(groups, metric)
        report["ead/across_input"] = across_input(groups, metric)
    return report
