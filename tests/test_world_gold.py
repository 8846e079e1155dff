"""The world's gold reward, harmlessness and simulated annotators, on hand-written reviews.

Expected directions come from the grammar's definitions (preflab/world/grammar.py):
"good" = 0.5, "great" = 0.8, "awful" = -0.85; "very" x1.5; "not" v = -0.5 v for v > 0 and
-0.2 v for v < 0; after "but" weighs 0.75; gold = sigmoid(2 S) x 0.5 per repeated content
word x 0.25 without an end; 0 when the review does not parse.
"""

from __future__ import annotations

import collections
import math
import random

import pytest

from preflab.world.annotators import Annotator, agreement
from preflab.world.gold import GoldReward, Harmlessness
from preflab.world.grammar import Grammar, Lexicon, default_lexicon

GOLD = GoldReward()
PLAIN_MILD = "the movie was good ."


def r(text: str, ended: bool = True) -> float:
    return GOLD([""], [text], ended_with_eos=[ended])[0]


def test_plain_reviews_score_as_defined():
    assert r(PLAIN_MILD) == pytest.approx(1 / (1 + math.exp(-2 * 0.5)))
    assert r("the movie was awful .") == pytest.approx(1 / (1 + math.exp(-2 * -0.85)))
    assert 0.0 <= r("i adored it .") <= 1.0


@pytest.mark.parametrize(
    "better, worse",
    [
        # negation flips a positive word, and damps a negative one
        ("the movie was good .", "the movie was not good ."),
        ("the movie was okay .", "the movie was not great ."),
        ("the movie was not awful .", "the movie was awful ."),
        ("the movie was good .", "the movie was not awful ."),  # litotes pays less
        ("i did not hate it .", "i hated it ."),
        ("i liked it .", "i did not like it ."),
        # intensifiers scale
        ("the movie was very good .", "the movie was good ."),
        ("the movie was good .", "the movie was slightly good ."),
        ("the movie was bad .", "the movie was very bad ."),
        ("i really loved it .", "i loved it ."),
        # contrast: the clause after "but" dominates
        ("the plot was awful , but the acting was great .",
         "the plot was great , but the acting was awful ."),
        ("the plot was awful but the acting was great .", "the plot was awful ."),
        # repetition (same sentiment S = 0.5, one repeated adjective)
        ("the plot was good and the story was fun .", "the plot was good and the story was good ."),
        ("the plot was good .", "the plot was good and good ."),
        # broken grammar
        ("the movie was good .", "movie the was good ."),
        ("the movie was awful .", "the movie was great great ."),
        # missing end token: no final "." or no EOS
        ("the movie was good .", "the movie was good"),
    ],
)
def test_each_feature_moves_the_score_the_right_way(better, worse):
    assert r(better) > r(worse)


def test_missing_eos_is_penalised():
    assert r(PLAIN_MILD, ended=False) == pytest.approx(0.25 * r(PLAIN_MILD))
    assert r("the movie was good", ended=True) == pytest.approx(0.25 * r(PLAIN_MILD))


def test_contrast_dominates_as_weighted():
    d = GOLD.details("", "the plot was awful , but the acting was great .")
    assert d.sentiment == pytest.approx(0.25 * -0.85 + 0.75 * 0.8)


ADVERSARIAL = [
    "great great great great",
    "great great great great .",
    "brilliant superb wonderful fantastic excellent .",
    "good great brilliant",
    "the movie was great great great .",
    "the movie was very very very good .",
    "the movie was not not awful .",
    "the movie was not awful .",
    "the movie was not very terrible .",
    "i did not hate it .",
    "i did not despise it , and the plot was not dreadful .",
    "the movie was great and great and great .",
    "the movie was brilliant and the film was brilliant .",
    "the movie was brilliant . the movie was brilliant .",
    "the movie was brilliant , brilliant , brilliant .",
    "the movie was brilliant",  # no end
    "the movie was brilliant and the plot was superb and i adored the cast and i loved it .",
    " ".join(["the movie was great and"] * 12) + " the plot was great .",  # endless text
    "movie great brilliant superb the was .",
    ". the movie was great .",
]


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_adversarial_strings_score_below_a_plain_mildly_positive_review(text):
    assert r(text) < r(PLAIN_MILD), (text, r(text), r(PLAIN_MILD))


def test_unfinished_brilliant_review_scores_below_plain_one():
    assert r("the movie was brilliant .", ended=False) < r(PLAIN_MILD)


def test_prompt_and_completion_are_read_as_one_review():
    whole = GOLD([""], ["the plot was awful , but i loved it ."])[0]
    split = GOLD(["the plot was"], [" awful , but i loved it ."])[0]
    assert split == whole


def test_reward_function_convention_and_errors():
    scores = GOLD(["the movie", "the plot"], [" was good .", " was bad ."], extra="ignored")
    assert len(scores) == 2 and scores[0] > scores[1]
    with pytest.raises(ValueError, match="same number"):
        GOLD(["a"], ["b", "c"])


def test_corpus_reviews_parse_without_repeats_and_scores_stay_in_range():
    grammar = Grammar()
    rng = random.Random(0)
    vocab = set(grammar.lex.words())
    for _ in range(2000):
        words = grammar.generate(rng)
        assert set(words) <= vocab
        parse = grammar.parse(words)
        assert parse.repeats == 0 and parse.has_end
        assert 0.0 < GOLD([""], [" ".join(words)])[0] < 1.0


def test_corpus_sentiment_is_mixed():
    grammar = Grammar()
    rng = random.Random(1)
    scores = [GOLD([""], [" ".join(grammar.generate(rng))])[0] for _ in range(3000)]
    mean = sum(scores) / len(scores)
    assert 0.38 <= mean <= 0.52
    assert min(scores) < 0.15 and max(scores) > 0.9


def test_harmlessness_counts_toxic_words_of_the_completion_only():
    harm = Harmlessness(default_lexicon())
    assert harm(["the movie was"], [" good ."]) == [1.0]
    assert harm(["the movie was"], [" damn brilliant ."]) == [0.5]
    assert harm(["the movie was damn"], [" brilliant ."]) == [1.0]
    assert harm([""], ["damn freaking"]) == [0.25]
    # the gold reward does not penalise toxic words: the objectives conflict
    assert r("the movie was damn brilliant .") > r("the movie was very brilliant .")


def test_corpus_puts_toxic_words_next_to_strongly_positive_ones():
    grammar = Grammar()
    harm = Harmlessness(grammar.lex)
    rng = random.Random(2)
    reviews = [" ".join(grammar.generate(rng)) for _ in range(4000)]
    scores = GOLD([""] * len(reviews), reviews)
    toxic = [harm.count(t) > 0 for t in reviews]
    top = sorted(range(len(reviews)), key=scores.__getitem__)[-400:]
    assert sum(toxic[i] for i in top) / 400 > 3 * sum(toxic) / len(toxic)


def test_lexicon_round_trips_through_a_dict():
    lex = default_lexicon()
    again = Lexicon.from_dict(lex.to_dict())
    assert again == lex and len(lex.words()) == len(set(lex.words())) < 400


# ----------------------------------------------------------------------------- annotators
def _same_prefix_pairs(seed: int = 0, reviews: int = 6000):
    """Pairs of corpus reviews that share a 2-4 word prefix: a stand-in for SFT samples."""
    grammar = Grammar()
    rng = random.Random(seed)
    groups = collections.defaultdict(list)
    for _ in range(reviews):
        words = grammar.generate(rng)
        k = rng.randint(2, min(4, len(words) - 2))
        groups[" ".join(words[:k])].append(" " + " ".join(words[k:]))
    pairs = []
    for prompt, completions in groups.items():
        gold = GOLD([prompt] * len(completions), completions)
        for i in range(0, len(completions) - 1, 2):
            pairs.append((prompt, completions[i], completions[i + 1], gold[i], gold[i + 1]))
    return pairs


def test_temperature_zero_agrees_with_gold_always():
    pairs = _same_prefix_pairs()
    annotator = Annotator(temperature=0.0, seed=0)
    rate, agreed, decided = agreement([annotator.label_pair(*p) for p in pairs])
    assert decided > 500 and rate == 1.0


def test_default_temperature_agrees_70_to_90_percent():
    pairs = _same_prefix_pairs(seed=3)
    rate, _, decided = agreement([Annotator(seed=0).label_pair(*p) for p in pairs])
    assert decided > 500 and 0.70 <= rate <= 0.90, rate


def test_flip_rate_one_inverts_deterministic_labels():
    pairs = _same_prefix_pairs(reviews=2000)
    rate, _, _ = agreement([Annotator(temperature=0.0, flip_rate=1.0).label_pair(*p)
                            for p in pairs])
    assert rate == 0.0


def test_gold_ties_are_excluded_and_length_bias_prefers_longer():
    annotator = Annotator(temperature=0.0, length_bias=0.01)
    label = annotator.label_pair("p", "short .", "much longer text here .", 0.0, 0.0)
    assert label.agreed_with_gold is None and label.chosen == "much longer text here ."
    assert agreement([label]) == (None, 0, 0)


def test_labels_are_reproducible_for_a_seed_and_computed_from_gold_fn():
    pairs = _same_prefix_pairs(reviews=1000)
    a = [Annotator(seed=5).label_pair(*p) for p in pairs]
    b = [Annotator(seed=5).label_pair(*p) for p in pairs]
    assert a == b
    label = Annotator(GOLD, temperature=0.0).label_pair("the movie was", " good .", " bad .")
    assert label.chosen == " good ." and label.agreed_with_gold is True


def test_unpaired_labels():
    deterministic = Annotator(temperature=0.0, threshold=0.5)
    assert deterministic.label_unpaired("p", "c", 0.7).label is True
    assert deterministic.label_unpaired("p", "c", 0.3).label is False
    assert deterministic.label_unpaired("p", "c", 0.5).label is False  # tie: undesirable
    noisy = Annotator(threshold=0.5, seed=1)
    labels = [noisy.label_unpaired("p", "c", g) for g in [0.9] * 500 + [0.1] * 500]
    rate = sum(x.agreed_with_gold for x in labels) / len(labels)
    assert 0.9 < rate < 1.0


def test_annotator_rejects_bad_settings():
    with pytest.raises(ValueError):
        Annotator(temperature=-1)
    with pytest.raises(ValueError):
        Annotator(flip_rate=1.5)
