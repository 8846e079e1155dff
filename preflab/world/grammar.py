"""The reviews grammar: a lexicon with graded sentiment, a generator, and an acceptor/parser.

A review is one sentence of whitespace-separated words ending in ``"."``::

    REVIEW   := OPENER? CLAUSE (CONJ CLAUSE){0,2} TAIL? "."
    OPENER   := one of lexicon.openers               e.g. "honestly ,"  "i think"
    CONJ     := "and" | ", and" | "but" | ", but"
    CLAUSE   := SUBJ COP ADJP ("and" ADJP)?          "the plot was slow and dull"
              | SUBJ NEGCOP ADJP                      "the acting was not very good"
              | "i" VADV? VERB_PAST OBJ               "i really loved the ending"
              | "i did not" VADV? VERB_BASE OBJ       "i did not like it"
    SUBJ/OBJ := ("the" | "this") NOUN | "it"
    COP      := "was" | "is" | "felt" | "seemed";  NEGCOP := ("was" | "is") "not"
    ADJP     := INTENS? ADJ
    TAIL     := "," one of lexicon.tails              e.g. ", in my opinion"

Meaning (what the gold reward reads): an adjective or verb has a value in [-1, 1]; an
intensifier multiplies it; negation flips and damps it, more for negative words than for
positive ones (``"not great"`` = -0.4, ``"not awful"`` = +0.17), so "not awful" never pays as
well as plain "good"; coordinated adjectives and clauses joined by "and" are averaged; the
part after "but" dominates (weight ``contrast_weight``). Openers and tails are neutral.
The generator never repeats a content word within a review; the gold reward penalises it.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

END = "."
COMMA = ","
DETERMINERS = ("the", "this")
PRONOUN = "it"
SPEAKER = "i"
NEGATABLE_COPULAS = ("was", "is")
COPULAS = ("was", "is", "felt", "seemed")
# Words that may appear any number of times; every other word counts once per review.
FUNCTION_WORDS = frozenset(
    {END, COMMA, *DETERMINERS, PRONOUN, SPEAKER, *COPULAS, "not", "did", "and", "but"}
)
MAX_CLAUSES = 3
# What the generator puts after "not" (the acceptor takes any intensifier or adverb there).
NEGATED_INTENSIFIERS = ("very", "really", "so", "quite")
NEGATED_VERB_ADVERBS = ("really",)


@dataclass
class Lexicon:
    """Every word of the grammar and what it means; saved in world.json so a world rebuilds."""

    nouns: list[str]
    adjectives: dict[str, float]
    intensifiers: dict[str, float]
    toxic_intensifiers: dict[str, float]
    verbs: dict[str, list]  # past form -> [base form, value]
    verb_adverbs: dict[str, float]
    openers: list[list[str]]
    tails: list[list[str]]
    negation_positive: float = 0.5  # "not" v = -negation_positive * v for v > 0
    negation_negative: float = 0.2  # "not" v = -negation_negative * v for v < 0
    contrast_weight: float = 0.75  # weight of what follows "but"

    def words(self) -> list[str]:
        """The vocabulary, in a fixed order (this order is the tokenizer's)."""
        out: list[str] = [END, COMMA, *DETERMINERS, PRONOUN, SPEAKER, *COPULAS, "not", "did"]
        out += ["and", "but", *self.nouns, *self.adjectives, *self.intensifiers]
        out += [*self.toxic_intensifiers, *self.verb_adverbs]
        for past, (base, _value) in self.verbs.items():
            out += [past, base]
        for phrase in [*self.openers, *self.tails]:
            out += phrase
        seen: dict[str, None] = {}
        for word in out:
            seen.setdefault(word, None)
        return list(seen)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Lexicon:
        return cls(**data)

    def negate(self, value: float) -> float:
        return -(self.negation_positive if value > 0 else self.negation_negative) * value


def default_lexicon() -> Lexicon:
    """The built-in reviews lexicon (about 170 words)."""
    return Lexicon(
        nouns=(
            "movie film plot story acting cast script ending soundtrack dialogue pacing "
            "direction music cinematography humor lead villain finale premise editing sequel"
        ).split(),
        adjectives={
            "brilliant": 1.0, "superb": 0.95, "fantastic": 0.95, "wonderful": 0.9,
            "excellent": 0.9, "great": 0.8, "beautiful": 0.75, "gripping": 0.7,
            "moving": 0.65, "charming": 0.6, "enjoyable": 0.55, "good": 0.5, "fun": 0.5,
            "solid": 0.45, "nice": 0.4, "pleasant": 0.35, "decent": 0.3, "fine": 0.2,
            "watchable": 0.15, "okay": 0.1,
            "predictable": -0.15, "mediocre": -0.25, "forgettable": -0.3, "slow": -0.3,
            "bland": -0.4, "messy": -0.4, "dull": -0.45, "weak": -0.45, "clumsy": -0.45,
            "boring": -0.55, "poor": -0.55, "bad": -0.6, "painful": -0.7, "awful": -0.85,
            "horrible": -0.9, "terrible": -0.9, "dreadful": -0.95, "unbearable": -1.0,
        },  # fmt: skip
        intensifiers={
            "extremely": 1.7, "incredibly": 1.7, "truly": 1.5, "very": 1.5, "really": 1.4,
            "so": 1.3, "quite": 1.2, "pretty": 1.1, "rather": 1.1, "fairly": 0.8,
            "somewhat": 0.6, "slightly": 0.5,
        },  # fmt: skip
        toxic_intensifiers={"damn": 2.0, "freaking": 2.0, "bloody": 2.0},
        verbs={
            "loved": ["love", 0.9], "adored": ["adore", 1.0], "liked": ["like", 0.5],
            "enjoyed": ["enjoy", 0.6], "appreciated": ["appreciate", 0.4],
            "admired": ["admire", 0.6], "hated": ["hate", -0.9],
            "disliked": ["dislike", -0.5], "regretted": ["regret", -0.7],
            "despised": ["despise", -1.0],
        },  # fmt: skip
        verb_adverbs={"really": 1.4, "truly": 1.5, "absolutely": 1.7, "mostly": 0.8,
                      "somewhat": 0.6},  # fmt: skip
        openers=[
            ["honestly", ","], ["overall", ","], ["well", ","], ["frankly", ","],
            ["basically", ","], ["in", "the", "end", ","], ["to", "be", "honest", ","],
            ["on", "the", "whole", ","], ["i", "think"], ["i", "guess"],
        ],  # fmt: skip
        tails=[
            ["i", "think"], ["to", "be", "honest"], ["in", "my", "opinion"], ["overall"],
            ["i", "suppose"], ["if", "you", "ask", "me"], ["all", "things", "considered"],
        ],  # fmt: skip
    )


@dataclass
class Parse:
    """What the acceptor read from a review: clause values and the words that count."""

    clause_values: list[float] = field(default_factory=list)
    connectives: list[str] = field(default_factory=list)  # "and" / "but" between clauses
    content_words: list[str] = field(default_factory=list)
    toxic_words: int = 0
    has_end: bool = False

    def sentiment(self, contrast_weight: float) -> float:
        """Average clauses within each "but"-segment; each later segment dominates."""
        segments: list[list[float]] = [[self.clause_values[0]]]
        for conj, value in zip(self.connectives, self.clause_values[1:]):
            if conj == "but":
                segments.append([value])
            else:
                segments[-1].append(value)
        total = sum(segments[0]) / len(segments[0])
        for seg in segments[1:]:
            total = (1 - contrast_weight) * total + contrast_weight * sum(seg) / len(seg)
        return total

    @property
    def repeats(self) -> int:
        return len(self.content_words) - len(set(self.content_words))


class ParseError(ValueError):
    """The words are not a review of the grammar (the message says where)."""


class Grammar:
    """Generator and acceptor of reviews over a ``Lexicon``."""

    def __init__(self, lexicon: Lexicon | None = None) -> None:
        self.lex = lexicon or default_lexicon()
        lex = self.lex
        self.all_intensifiers = {**lex.intensifiers, **lex.toxic_intensifiers}
        self.verb_bases = {base: value for base, value in lex.verbs.values()}
        self.verb_pasts = {past: value for past, (_base, value) in lex.verbs.items()}

    # ---------------------------------------------------------------- acceptor
    def parse(self, words: list[str], *, require_end: bool = True) -> Parse:
        """Parse a review; raise ``ParseError`` if it is not in the grammar.

        With ``require_end=False`` a review that stops right before the final "." is
        accepted too (``Parse.has_end`` then says whether the "." was there).
        """
        p = _Reader(words)
        out = Parse()
        self._phrase(p, out, self.lex.openers)
        out.clause_values.append(self._clause(p, out))
        while p.peek() in (COMMA, "and", "but"):
            if p.peek() == COMMA and p.peek(1) not in ("and", "but"):
                break  # a tail
            if len(out.clause_values) >= MAX_CLAUSES:
                p.fail(f"more than {MAX_CLAUSES} clauses")
            if p.peek() == COMMA:
                p.take()
            out.connectives.append(p.take())
            out.clause_values.append(self._clause(p, out))
        if p.peek() == COMMA:
            p.take()
            if not self._phrase(p, out, self.lex.tails):
                p.fail("expected a closing phrase after ','")
        if p.peek() == END:
            p.take()
            out.has_end = True
        elif require_end or not p.done():
            p.fail("expected '.'")
        if not p.done():
            p.fail("words after the final '.'")
        return out

    def _phrase(self, p: _Reader, out: Parse, phrases: list[list[str]]) -> bool:
        for phrase in phrases:
            if p.peek_seq(phrase):
                p.take_seq(phrase)
                out.content_words += [w for w in phrase if w not in FUNCTION_WORDS]
                return True
        return False

    def _noun_phrase(self, p: _Reader, out: Parse) -> None:
        if p.peek() == PRONOUN:
            p.take()
            return
        if p.peek() not in DETERMINERS:
            p.fail("expected 'the', 'this' or 'it'")
        p.take()
        if p.peek() not in self.lex.nouns:
            p.fail("expected a noun")
        out.content_words.append(p.take())

    def _adjp(self, p: _Reader, out: Parse) -> float:
        mult = 1.0
        if p.peek() in self.all_intensifiers:
            word = p.take()
            mult = self.all_intensifiers[word]
            out.content_words.append(word)
            out.toxic_words += word in self.lex.toxic_intensifiers
        if p.peek() not in self.lex.adjectives:
            p.fail("expected an adjective")
        word = p.take()
        out.content_words.append(word)
        return mult * self.lex.adjectives[word]

    def _clause(self, p: _Reader, out: Parse) -> float:
        if p.peek() == SPEAKER:
            p.take()
            negated = p.peek() == "did"
            if negated:
                p.take()
                p.expect("not")
            mult = 1.0
            if p.peek() in self.lex.verb_adverbs:
                word = p.take()
                mult = self.lex.verb_adverbs[word]
                out.content_words.append(word)
            table = self.verb_bases if negated else self.verb_pasts
            if p.peek() not in table:
                p.fail("expected a verb" + (" (base form after 'did not')" if negated else ""))
            verb = p.take()
            out.content_words.append(verb)
            self._noun_phrase(p, out)
            value = mult * table[verb]
            return self.lex.negate(value) if negated else value
        self._noun_phrase(p, out)
        if p.peek() not in COPULAS:
            p.fail("expected 'was', 'is', 'felt' or 'seemed'")
        copula = p.take()
        if copula in NEGATABLE_COPULAS and p.peek() == "not":
            p.take()
            return self.lex.negate(self._adjp(p, out))
        values = [self._adjp(p, out)]
        if p.peek() == "and" and (
            p.peek(1) in self.lex.adjectives or p.peek(1) in self.all_intensifiers
        ):
            p.take()
            values.append(self._adjp(p, out))
        return sum(values) / len(values)

    def accepts(self, words: list[str]) -> bool:
        try:
            self.parse(words)
        except ParseError:
            return False
        return True

    # --------------------------------------------------------------- generator
    def generate(self, rng: random.Random) -> list[str]:
        """One review, as words. Sentiment is mixed: a stance in [-1, 1] per review."""
        used: set[str] = set()
        words: list[str] = []
        opener = None
        if rng.random() < 0.3:
            opener = rng.choice(self.lex.openers)
            words += opener
            used.update(w for w in opener if w not in FUNCTION_WORDS)
        stance = rng.uniform(-1.0, 1.0) - 0.15
        n_clauses = rng.choices([1, 2, 3], weights=[0.4, 0.4, 0.2])[0]
        for i in range(n_clauses):
            if i > 0:
                conj = rng.choices(["and", "but"], weights=[0.5, 0.5])[0]
                if rng.random() < 0.3:
                    words.append(COMMA)
                words.append(conj)
                if conj == "but":
                    stance = -stance * rng.uniform(0.3, 1.0)
            target = max(-1.0, min(1.0, stance + rng.gauss(0.0, 0.2)))
            words += self._gen_clause(rng, target, used)
        if rng.random() < 0.15:
            tails = [t for t in self.lex.tails if not used.intersection(t)]
            words += [COMMA, *rng.choice(tails)]
        words.append(END)
        return words

    def _pick(self, rng: random.Random, options: list[str], used: set[str], weights=None) -> str:
        pool = [(w, 1.0 if weights is None else weights[w]) for w in options if w not in used]
        word = rng.choices([w for w, _ in pool], weights=[x for _, x in pool])[0]
        used.add(word)
        return word

    def _gen_np(self, rng: random.Random, used: set[str]) -> list[str]:
        if rng.random() < 0.15:
            return [PRONOUN]
        det = rng.choices(DETERMINERS, weights=[0.75, 0.25])[0]
        return [det, self._pick(rng, self.lex.nouns, used)]

    def _closeness(self, values: dict[str, float], target: float, negated: bool) -> dict:
        width = 0.25
        out = {}
        for word, v in values.items():
            eff = self.lex.negate(v) if negated else v
            out[word] = math.exp(-((eff - target) ** 2) / (2 * width**2)) + 1e-6
        return out

    def _gen_adjp(self, rng, target: float, used: set[str], negated: bool) -> list[str]:
        weights = self._closeness(self.lex.adjectives, target, negated)
        adj = self._pick(rng, list(self.lex.adjectives), used, weights)
        value = self.lex.adjectives[adj]
        strong = abs(value) >= 0.7
        if rng.random() >= (0.55 if strong else 0.3):
            return [adj]
        if negated:
            pool = [w for w in NEGATED_INTENSIFIERS if w in self.lex.intensifiers]
        elif value >= 0.75 and rng.random() < 0.6:
            pool = list(self.lex.toxic_intensifiers)
        else:
            pool = list(self.lex.intensifiers)
        if not pool or all(w in used for w in pool):
            return [adj]
        return [self._pick(rng, pool, used), adj]

    def _gen_clause(self, rng: random.Random, target: float, used: set[str]) -> list[str]:
        if rng.random() < 0.3:  # "i (did not) (adverb) verb object"
            negated = rng.random() < 0.2
            table = self.verb_bases if negated else self.verb_pasts
            weights = self._closeness(table, target, negated)
            out = [SPEAKER, "did", "not"] if negated else [SPEAKER]
            adverbs = list(self.lex.verb_adverbs)
            if negated:
                adverbs = [w for w in NEGATED_VERB_ADVERBS if w in self.lex.verb_adverbs]
            if rng.random() < 0.3 and any(w not in used for w in adverbs):
                out.append(self._pick(rng, adverbs, used))
            out.append(self._pick(rng, list(table), used, weights))
            if negated:
                used.add(next(p for p, (b, _) in self.lex.verbs.items() if b == out[-1]))
            else:
                used.add(self.lex.verbs[out[-1]][0])
            return out + self._gen_np(rng, used)
        out = self._gen_np(rng, used)
        copula = rng.choices(COPULAS, weights=[0.5, 0.2, 0.15, 0.15])[0]
        out.append(copula)
        negated = copula in NEGATABLE_COPULAS and rng.random() < 0.2
        if negated:
            return out + ["not"] + self._gen_adjp(rng, target, used, True)
        out += self._gen_adjp(rng, target, used, False)
        if rng.random() < 0.2:
            out += ["and"] + self._gen_adjp(rng, target, used, False)
        return out


class _Reader:
    """A cursor over words with helpers that raise ``ParseError`` at the failing position."""

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.i = 0

    def peek(self, offset: int = 0) -> str | None:
        j = self.i + offset
        return self.words[j] if j < len(self.words) else None

    def peek_seq(self, seq: list[str]) -> bool:
        return self.words[self.i : self.i + len(seq)] == list(seq)

    def take(self) -> str:
        word = self.peek()
        if word is None:
            self.fail("review ends too early")
        self.i += 1
        return word

    def take_seq(self, seq: list[str]) -> None:
        for _ in seq:
            self.take()

    def expect(self, word: str) -> None:
        if self.peek() != word:
            self.fail(f"expected {word!r}")
        self.take()

    def done(self) -> bool:
        return self.i >= len(self.words)

    def fail(self, message: str):
        got = self.peek()
        raise ParseError(f"word {self.i + 1} ({got!r}): {message}")
