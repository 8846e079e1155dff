"""Reward sources: where a score for (prompt, completion) comes from.

The ecosystem's convention is a plain function ``fn(prompts, completions, **kwargs) ->
list[float]``. A source is named on the command line by a spec:

    package.module:function     a function importable from an installed module
    path/to/file.py:function    a function in a Python file

Every source is called the same way, so a trainer or evaluator never asks what kind it has.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

from preflab.errors import ConfigError

RewardFn = Callable[..., Sequence[float]]


def load_reward_function(spec: str, *, flag: str = "--reward") -> RewardFn:
    """Resolve ``module:function`` or ``file.py:function`` to the callable it names."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ConfigError(
            f"{flag} {spec!r} is not a reward function spec",
            expected="module:function or path/to/file.py:function",
        )
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"{flag}: no such file", path=target)
        module_spec = importlib.util.spec_from_file_location(f"_preflab_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # the user's file: report, don't crash
            raise ConfigError(f"{flag}: importing the file failed: {exc}", path=target) from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(f"{flag}: cannot import module {target!r}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"{flag}: {target!r} has no function {name!r}")
    return fn


def score(fn: RewardFn, prompts: Sequence[str], completions: Sequence[str], **kwargs) -> list[float]:
    """Call a reward function and check that it kept the contract (one float per pair)."""
    values = list(fn(list(prompts), list(completions), **kwargs))
    if len(values) != len(completions):
        raise ConfigError(
            f"the reward function returned {len(values)} scores for {len(completions)} completions"
        )
    return [float(v) for v in values]
