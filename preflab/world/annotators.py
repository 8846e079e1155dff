"""Simulated annotators: noisy, biased labels drawn from the gold reward, as people give them.

Paired labels (Bradley-Terry on the gold reward):

    u_a - u_b = (r*_a - r*_b) + length_bias * (len_a - len_b)       (len in words)
    P(a preferred) = sigmoid((u_a - u_b) / temperature)

- ``temperature`` 0 makes labels deterministic: the higher utility wins; an exact tie in
  utility is broken by a fair coin (the Bradley-Terry limit, P = 1/2).
- then the label is flipped with probability ``flip_rate`` (careless annotators).
- ``agreed_with_gold`` says whether the chosen side has the higher gold reward; it is
  ``None`` for gold ties, which agreement rates exclude.

Unpaired labels (for KTO): a completion is "desirable" with probability
``sigmoid((u - threshold) / temperature)``, where ``u = r* + length_bias * (len -
length_reference)``; at temperature 0 it is desirable exactly when ``u > threshold`` (a tie
is undesirable). ``threshold`` defaults to the corpus mean gold reward in a built world
(``World.annotator``), and the same ``flip_rate`` applies.

The default temperature (``DEFAULT_TEMPERATURE``) is chosen so that pairs of reviews that
share a prefix, drawn from the corpus distribution (a stand-in for SFT samples), are labelled
in agreement with gold about 80% of the time; ``world build`` measures it and writes it to
world.json.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import NamedTuple

DEFAULT_TEMPERATURE = 0.12
GOLD_TIE = 1e-12


class PairLabel(NamedTuple):
    chosen: str
    rejected: str
    chosen_gold: float
    rejected_gold: float
    agreed_with_gold: bool | None  # None: the two sides tie on gold


class UnpairedLabel(NamedTuple):
    label: bool  # True: desirable
    gold: float
    agreed_with_gold: bool  # the label equals (gold > threshold)


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x), without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _length(text: str) -> int:
    return len(text.split())


class Annotator:
    """Labels pairs and single completions from gold rewards; reproducible for a seed."""

    def __init__(
        self,
        gold_fn: Callable[..., list[float]] | None = None,
        *,
        temperature: float = DEFAULT_TEMPERATURE,
        flip_rate: float = 0.0,
        length_bias: float = 0.0,
        threshold: float = 0.5,
        length_reference: float = 0.0,
        seed: int = 0,
    ) -> None:
        if temperature < 0:
            raise ValueError(f"annotator temperature must be >= 0, got {temperature}")
        if not 0.0 <= flip_rate <= 1.0:
            raise ValueError(f"annotator flip_rate must be in [0, 1], got {flip_rate}")
        self.gold_fn = gold_fn
        self.temperature = temperature
        self.flip_rate = flip_rate
        self.length_bias = length_bias
        self.threshold = threshold
        self.length_reference = length_reference
        self.rng = random.Random(seed)

    def _gold(self, prompt: str, completion: str, gold: float | None) -> float:
        if gold is not None:
            return gold
        if self.gold_fn is None:
            raise ValueError("annotator without gold_fn: pass the gold rewards")
        return self.gold_fn([prompt], [completion])[0]

    def _prefer(self, margin: float) -> bool:
        """Draw whether the side with utility ``margin`` above the other is preferred."""
        if self.temperature == 0:
            first = margin > 0 if margin != 0 else self.rng.random() < 0.5
        else:
            first = self.rng.random() < sigmoid(margin / self.temperature)
        if self.flip_rate and self.rng.random() < self.flip_rate:
            first = not first
        return first

    def label_pair(
        self,
        prompt: str,
        a: str,
        b: str,
        gold_a: float | None = None,
        gold_b: float | None = None,
    ) -> PairLabel:
        """Choose between completions ``a`` and ``b`` of ``prompt``."""
        gold_a = self._gold(prompt, a, gold_a)
        gold_b = self._gold(prompt, b, gold_b)
        margin = gold_a - gold_b + self.length_bias * (_length(a) - _length(b))
        if self._prefer(margin):
            chosen, rejected, g_c, g_r = a, b, gold_a, gold_b
        else:
            chosen, rejected, g_c, g_r = b, a, gold_b, gold_a
        agreed = None if abs(gold_a - gold_b) <= GOLD_TIE else g_c > g_r
        return PairLabel(chosen, rejected, g_c, g_r, agreed)

    def label_unpaired(self, prompt: str, completion: str, gold: float | None = None):
        """Desirable or not, for KTO."""
        gold = self._gold(prompt, completion, gold)
        margin = gold - self.threshold
        margin += self.length_bias * (_length(completion) - self.length_reference)
        if self.temperature == 0 and margin == 0:
            label = False
            if self.flip_rate and self.rng.random() < self.flip_rate:
                label = True
        else:
            label = self._prefer(margin)
        return UnpairedLabel(label, gold, label == (gold > self.threshold))

    def settings(self) -> dict:
        return {
            "temperature": self.temperature,
            "flip_rate": self.flip_rate,
            "length_bias": self.length_bias,
            "threshold": self.threshold,
            "length_reference": self.length_reference,
        }


def agreement(labels: list[PairLabel]) -> tuple[float | None, int, int]:
    """(agreement rate over non-tied pairs or None, agreeing pairs, non-tied pairs)."""
    decided = [x.agreed_with_gold for x in labels if x.agreed_with_gold is not None]
    agreed = sum(decided)
    return (agreed / len(decided) if decided else None), agreed, len(decided)
