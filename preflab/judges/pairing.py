"""Pairs from pairwise judgments: which of a prompt's completions to compare, and which
compared pairs to keep (``PAIRINGS``; the rules are in ``preflab label --help``), or, for
KTO, which completions are desirable (win rate above 1/2). Used by ``preflab label``; any
loop that labels with a judge (online DPO) can use it too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class Group:
    """One prompt and its distinct, non-empty completions, in file order. ``prompt`` is the
    text judges read; for a chat prompt, the rendered text the policy saw, and ``messages``
    the prompt as the user gave it (the records written keep it: ``make_outputs``)."""

    prompt: str
    completions: list[str]
    messages: list | None = None

    def prompt_field(self):
        """The prompt as written to pairs: the messages of a chat prompt, else the text."""
        return self.prompt if self.messages is None else self.messages

    def completion_field(self, i: int):
        """Completion ``i`` as written: for a chat prompt an assistant message list (TRL's
        conversational format), else the text."""
        text = self.completions[i]
        return text if self.messages is None else [{"role": "assistant", "content": text}]


@dataclass(frozen=True)
class Pairing:
    """Which pairs of a prompt's K completions are compared, and which compared pairs are
    written: ``select(wins, p) -> [(i, j)]`` oriented chosen-first, given each completion's
    win rate and the judged ``p[(i, j)]`` = P(i better)."""

    compare: Callable[[int], list[tuple[int, int]]]
    select: Callable[[dict[int, float], dict[tuple[int, int], float]], list[tuple[int, int]]]
    needs_judge: bool  # the rule ranks by the judge's answers (no pairs without one)


def _round_robin(k: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


def _adjacent(k: int) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(0, k - 1, 2)]


def oriented(p: dict[tuple[int, int], float], i: int, j: int) -> float:
    """P(i better than j) from comparisons judged in either order."""
    return p[(i, j)] if (i, j) in p else 1.0 - p[(j, i)]


def _decided(wins, p) -> list[tuple[int, int]]:
    return [(i, j) if v > 0.5 else (j, i) for (i, j), v in p.items() if v != 0.5]


def _best_worst(wins, p) -> list[tuple[int, int]]:
    order = sorted(wins)  # file order breaks ties: the first best, the last worst
    best = max(order, key=lambda i: (wins[i], -i))
    worst = min(order, key=lambda i: (wins[i], -i))
    if wins[best] <= wins[worst] or oriented(p, best, worst) <= 0.5:
        return []
    return [(best, worst)]


PAIRINGS: dict[str, Pairing] = {
    "best-worst": Pairing(_round_robin, _best_worst, needs_judge=True),
    "all": Pairing(_round_robin, _decided, needs_judge=False),
    "adjacent": Pairing(_adjacent, _decided, needs_judge=False),
}


def comparisons(groups: Sequence[Group], pairing: Pairing) -> list[tuple[int, int, int]]:
    """(group, i, j) for every pair to compare."""
    return [(g, i, j) for g, group in enumerate(groups)
            for i, j in pairing.compare(len(group.completions))]


def win_rates(todo, probabilities) -> dict[int, dict[int, float]]:
    """{group: {completion: mean P(it beats its opponent) over its comparisons}}."""
    total: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (g, i, j), p in zip(todo, probabilities):
        total[g][i].append(p)
        total[g][j].append(1.0 - p)
    return {g: {i: sum(v) / len(v) for i, v in d.items()} for g, d in total.items()}


def make_outputs(groups, todo, probabilities, pairing: Pairing, *, kto: bool) -> list[dict]:
    """Records to write: per prompt, the pairs ``pairing.select`` keeps (chosen first, with
    ``p_chosen``), or with ``kto`` each compared completion labelled by its win rate. A chat
    prompt's records are conversational: ``{"prompt": [messages], "chosen": [{"role":
    "assistant", "content": ...}], ...}`` (``completion`` likewise with ``kto``)."""
    wins = win_rates(todo, probabilities)
    if kto:
        return [{"prompt": groups[g].prompt_field(), "completion": groups[g].completion_field(i),
                 "label": rate > 0.5, "win_rate": round(rate, 6)}
                for g in sorted(wins) for i, rate in sorted(wins[g].items()) if rate != 0.5]
    judged: dict[int, dict[tuple[int, int], float]] = defaultdict(dict)
    for (g, i, j), p in zip(todo, probabilities):
        judged[g][(i, j)] = p
    out = []
    for g in sorted(judged):
        for i, j in pairing.select(wins[g], judged[g]):
            out.append({"prompt": groups[g].prompt_field(),
                        "chosen": groups[g].completion_field(i),
                        "rejected": groups[g].completion_field(j),
                        "p_chosen": round(oriented(judged[g], i, j), 6)})
    return out


def agreement(first: Sequence[float], second: Sequence[float]) -> dict:
    """How often two judges pick the same side, over the pairs both decide (P != 1/2)."""
    both = [(x > 0.5) == (y > 0.5) for x, y in zip(first, second) if x != 0.5 and y != 0.5]
    return {"pairs": len(first), "decided_by_both": len(both), "agreed": sum(both),
            "agreement": sum(both) / len(both) if both else None,
            "undecided_first": sum(x == 0.5 for x in first),
            "undecided_second": sum(y == 0.5 for y in second)}
