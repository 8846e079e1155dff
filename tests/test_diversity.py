"""Diversity metrics against values worked out by hand."""

from __future__ import annotations

import pytest

from preflab.metrics.diversity import (
    across_input,
    distinct_n,
    diversity_report,
    ead,
    per_input,
    self_bleu,
)


def test_distinct_n_by_hand():
    texts = ["a b a b"]
    assert distinct_n(texts, 1) == 2 / 4  # {a, b} of 4 unigrams
    assert distinct_n(texts, 2) == 2 / 3  # {ab, ba} of ab, ba, ab
    assert distinct_n(texts, 4) == 1.0
    assert distinct_n(texts, 5) == 0.0  # no 5-grams
    # the default averages n = 1..5 over the orders that exist (here 1..4)
    assert distinct_n(texts) == pytest.approx((1 / 2 + 2 / 3 + 1 + 1) / 4)
    # pooled over texts
    assert distinct_n(["a b", "a b"], 1) == 2 / 4
    assert distinct_n([], 1) == 0.0 and distinct_n([""]) == 0.0


def test_token_lists_are_accepted():
    assert distinct_n([[1, 2, 1, 2]], 2) == distinct_n(["x y x y"], 2)


def test_ead_by_hand():
    # unigrams of "a b c": unique 3, C = 3, V = 3: expected unique = 3 (1 - (2/3)^3) = 19/9
    assert ead(["a b c"], vocab_size=3, n=1) == pytest.approx(3 / (19 / 9))
    # with a huge n-gram space, EAD tends to distinct-n
    assert ead(["a b a b c"], vocab_size=10**6, n=2) == pytest.approx(distinct_n(["a b a b c"], 2),
                                                                       rel=1e-5)
    # unlike distinct-n, EAD does not fall just because the text is long
    short, long = ["a b c d"], [" ".join("abcdefghij"[i % 10] for i in range(200))]
    assert distinct_n(long, 1) < distinct_n(short, 1)
    assert ead(long, vocab_size=10, n=1) > 0.99
    with pytest.raises(ValueError):
        ead(["a"], vocab_size=0)


def test_per_input_and_across_input():
    groups = [["a b", "a b"], ["c d", "d c"]]
    # per input: each group on its own, then averaged
    assert per_input(groups, lambda t: distinct_n(t, 1)) == pytest.approx((2 / 4 + 2 / 4) / 2)
    assert per_input(groups, lambda t: distinct_n(t, 2)) == pytest.approx((1 / 2 + 1) / 2)
    # across inputs: the first sample of each group, pooled
    assert across_input(groups, lambda t: distinct_n(t, 1)) == 1.0


def test_a_collapsed_policy_has_low_per_input_diversity():
    collapsed = [["the film was great ."] * 4, ["the plot was great ."] * 4]
    varied = [["the film was great .", "it was awful .", "i liked it .", "dull plot ."]] * 2
    assert diversity_report(collapsed)["distinct_n/per_input"] < \
        diversity_report(varied)["distinct_n/per_input"]
    report = diversity_report(varied, vocab_size=50)
    assert set(report) == {"distinct_n/per_input", "distinct_n/across_input",
                           "ead/per_input", "ead/across_input", "self_bleu/per_input",
                           "self_bleu/across_input"}
    assert diversity_report(collapsed)["self_bleu/per_input"] == pytest.approx(1.0)
    assert diversity_report(collapsed)["self_bleu/per_input"] > \
        diversity_report(varied)["self_bleu/per_input"]
    # one sample per prompt: no per-input figures
    assert set(diversity_report([["a b"], ["c d"]])) == {"distinct_n/across_input",
                                                         "self_bleu/across_input"}


def test_self_bleu_by_hand():
    """Two texts, "a b c d" and "a b c e" (4 tokens each, so no brevity penalty).
    Each against the other: unigram precision 3/4, bigram 2/3, trigram 1/2, 4-gram 0/1,
    smoothed to 0.1/1. BLEU = exp((log 3/4 + log 2/3 + log 1/2 + log 0.1) / 4), the same for
    both, so it is also the mean."""
    import math

    expected = math.exp((math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2) + math.log(0.1)) / 4)
    assert self_bleu(["a b c d", "a b c e"]) == pytest.approx(expected)
    # identical texts: every precision is 1
    assert self_bleu(["a b c d"] * 3) == pytest.approx(1.0)
    # brevity: "a b" against "a b c d": precisions 1 (unigram), 1 (bigram); BP = exp(1 - 4/2)
    # "a b c d" against "a b": unigram 2/4, bigram 1/3, trigram 0 -> 0.1/2, 4-gram 0 -> 0.1/1
    short = math.exp(1 - 4 / 2)
    long = math.exp((math.log(2 / 4) + math.log(1 / 3) + math.log(0.05) + math.log(0.1)) / 4)
    assert self_bleu(["a b", "a b c d"]) == pytest.approx((short + long) / 2)
    assert self_bleu(["a b c"]) == 0.0 and self_bleu([]) == 0.0
