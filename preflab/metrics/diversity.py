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
- ``self_bleu(texts)``: the mean over texts of BLEU-4 of each text against all the others as
  references (Zhu et al. 2018, Texygen): uniform weights over n = 1..4, clipped n-gram
  counts, the brevity penalty against the closest reference length, and a zero precision
  smoothed to 0.1 / total ("method 1" of Chen and Cherry 2014). Orders for which the text
  holds no n-gram are left out. Higher means LESS diverse. At most ``max_texts`` texts (the
  first ones) are compared, since the cost grows with their square.

Imports only the standard library.
"""

from __future__ import annotations

import math
from collections import Counter
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


def _ngram_counts(tokens: Sequence[Hashable], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _bleu(hyp: Sequence[Hashable], refs: list[Sequence[Hashable]],
          ref_counts: list[list[Counter]], max_n: int) -> float:
    log_sum, orders = 0.0, 0
    for n in range(1, max_n + 1):
        counts = _ngram_counts(hyp, n)
        total = sum(counts.values())
        if not total:
            continue
        matched = sum(min(c, max(rc[n - 1].get(g, 0) for rc in ref_counts))
                      for g, c in counts.items())
        log_sum += math.log(matched / total if matched else 0.1 / total)
        orders += 1
    if not orders:
        return 0.0
    closest = min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
    brevity = 1.0 if len(hyp) > closest else math.exp(1 - closest / max(len(hyp), 1))
    return brevity * math.exp(log_sum / orders)


def self_bleu(texts: Sequence[Text], max_n: int = 4, max_texts: int = 200) -> float:
    """Mean BLEU of each text against the others (see the module docstring); 0 for < 2 texts."""
    tokens = [list(_tokens(t)) for t in texts[:max_texts]]
    tokens = [t for t in tokens if t]
    if len(tokens) < 2:
        return 0.0
    counts = [[_ngram_counts(t, n) for n in range(1, max_n + 1)] for t in tokens]
    scores = []
    for i, hyp in enumerate(tokens):
        others = [j for j in range(len(tokens)) if j != i]
        scores.append(_bleu(hyp, [tokens[j] for j in others], [counts[j] for j in others],
                            max_n))
    return sum(scores) / len(scores)


def per_input(groups: Sequence[Sequence[Text]], metric: Callable[[Sequence[Text]], float]):
    """``metric`` over each prompt's samples, averaged over prompts (empty groups skipped)."""
    values = [metric(group) for group in groups if len(group)]
    return sum(values) / len(values) if values else 0.0


def across_input(groups: Sequence[Sequence[Text]], metric: Callable[[Sequence[Text]], float]):
    """``metric`` over the first sample of each prompt."""
    return metric([group[0] for group in groups if len(group)])


def diversity_report(groups: Sequence[Sequence[Text]], vocab_size: int | None = None) -> dict:
    """distinct-n, self-BLEU (and EAD when ``vocab_size`` is given), across inputs, and per
    input when the groups hold more than one sample each."""
    metrics: dict[str, Callable[[Sequence[Text]], float]] = {
        "distinct_n": distinct_n, "self_bleu": self_bleu}
    if vocab_size is not None:
        metrics["ead"] = lambda texts: ead(texts, vocab_size)
    several = any(len(group) > 1 for group in groups)
    report = {}
    for name, metric in metrics.items():
        if several:
            report[f"{name}/per_input"] = per_input(groups, metric)
        report[f"{name}/across_input"] = across_input(groups, metric)
    return report
