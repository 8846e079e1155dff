"""Small learnable SFT datasets written in the formats users bring."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.conftest import WORDS

ADJECTIVES = ["great", "good", "bad", "awful", "fine", "boring", "fun"]


def sft_records(n: int = 64, seed: int = 0) -> list[dict]:
    """Prompt "the movie was ADJ" -> completion "ADJ and ADJ": learnable by a tiny model."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        adj = rng.choice(ADJECTIVES)
        noun = rng.choice(["movie", "film", "plot", "story", "acting"])
        records.append({"prompt": f"the {noun} was {adj}", "completion": f"really {adj} and {adj}"})
    return records


def conversational_records(n: int = 64, seed: int = 0) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": r["prompt"]},
                      {"role": "assistant", "content": r["completion"]}]}
        for r in sft_records(n, seed)
    ]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


assert set(ADJECTIVES) <= set(WORDS)
