"""The built-in world: synthetic movie reviews with a hidden gold reward.

A world directory holds ordinary files (an HF model directory, JSONL datasets) and a
``world.json`` that says how to rebuild its gold objectives. ``load_world`` reads it back::

    world = load_world("world")                    # or "world/world.json"
    world.gold_reward(prompts, completions, ended_with_eos=[...])   # -> list[float] in [0, 1]
    world.harmlessness(prompts, completions)                        # -> list[float] in (0, 1]
    annotator = world.annotator(temperature=0.0)   # simulated people (see annotators.py)

Modules: ``grammar`` (vocabulary, generator, acceptor), ``gold`` (gold reward and
harmlessness), ``annotators`` (Bradley-Terry labelers), ``build`` (writing a world,
``build_world``), ``tasks`` (label pairs, score a policy: the jobs behind ``preflab world``).

May import: errors, data, models, generation, rewards, evaluation (``tasks`` and ``build``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from preflab.errors import DataError
from preflab.world.annotators import Annotator
from preflab.world.gold import GoldParams, GoldReward, Harmlessness
from preflab.world.grammar import Grammar, Lexicon

WORLD_NAME = "reviews"
WORLD_VERSION = 1
WORLD_FILE = "world.json"

__all__ = ["World", "load_world", "WORLD_FILE", "Grammar", "GoldReward",
           "Harmlessness", "Annotator"]


@dataclass
class World:
    """A built world: where its files are, its gold objectives, its annotator defaults."""

    root: Path
    meta: dict
    grammar: Grammar
    gold_reward: GoldReward
    harmlessness: Harmlessness

    def path(self, name: str) -> Path:
        """The file the world lists under ``name`` ("model", "sft", "prompts_train", ...)."""
        return self.root / self.meta["files"][name]

    @property
    def model_dir(self) -> Path:
        return self.path("model")

    @property
    def corpus_gold_mean(self) -> float:
        return float(self.meta["corpus"]["gold_mean"])

    def annotator(
        self,
        temperature: float | None = None,
        flip_rate: float | None = None,
        length_bias: float | None = None,
        seed: int = 0,
        threshold: float | None = None,
    ) -> Annotator:
        """An annotator; any setting left ``None`` takes the world's default (world.json)."""
        defaults = self.meta["annotator"]

        def pick(value, key):
            return defaults[key] if value is None else value

        return Annotator(
            self.gold_reward,
            temperature=pick(temperature, "temperature"),
            flip_rate=pick(flip_rate, "flip_rate"),
            length_bias=pick(length_bias, "length_bias"),
            threshold=pick(threshold, "threshold"),
            length_reference=defaults["length_reference"],
            seed=seed,
        )


def load_world(path: str | Path) -> World:
    """Read a world directory (or its world.json) and rebuild its gold objectives."""
    path = Path(path)
    file = path / WORLD_FILE if path.is_dir() else path
    if not file.is_file():
        raise DataError("no built world here", path=str(file),
                        expected=f"a directory made by `preflab world build` with a {WORLD_FILE}")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read the world description: {err}", path=str(file)) from None
    if meta.get("world") != WORLD_NAME or meta.get("version") != WORLD_VERSION:
        raise DataError(
            f"unsupported world {meta.get('world')!r} version {meta.get('version')!r}",
            path=str(file), expected=f"world {WORLD_NAME!r} version {WORLD_VERSION}")
    try:
        lexicon = Lexicon.from_dict(meta["lexicon"])
        params = GoldParams(**meta["gold"])
        for key in ("files", "annotator", "corpus"):
            meta[key]  # noqa: B018  (presence check)
    except (KeyError, TypeError) as err:
        raise DataError(f"world description is missing or has a bad entry: {err}",
                        path=str(file)) from None
    grammar = Grammar(lexicon)
    return World(
        root=file.parent,
        meta=meta,
        grammar=grammar,
        gold_reward=GoldReward(grammar, params),
        harmlessness=Harmlessness(lexicon, params),
    )
