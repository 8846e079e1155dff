"""The built-in world's gold objectives as reward functions, for ``--reward`` / ``--gold-reward``.

    PREFLAB_WORLD=world preflab ppo ... --reward benchmarks/world_rewards.py:gold
    PREFLAB_WORLD=world preflab ppo ... --reward RM_DIR --gold-reward benchmarks/world_rewards.py:gold

``PREFLAB_WORLD`` names the world directory (default ``world``). ``gold`` applies the world's
end rule when the caller passes ``ended_with_eos`` (``preflab ppo`` always does).
"""

from __future__ import annotations

import os
from functools import lru_cache

from preflab.world import World, load_world


@lru_cache(maxsize=4)
def _world(path: str) -> World:
    return load_world(path)


def world() -> World:
    return _world(os.environ.get("PREFLAB_WORLD", "world"))


def gold(prompts, completions, **kwargs) -> list[float]:
    return world().gold_reward(prompts, completions, ended_with_eos=kwargs.get("ended_with_eos"))


def harmless(prompts, completions, **kwargs) -> list[float]:
    return world().harmlessness(prompts, completions)
