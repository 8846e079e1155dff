"""Reward sources: where a score for (prompt, completion) comes from.

The ecosystem's convention is a plain function ``fn(prompts, completions, **kwargs) ->
list[float]``. A source is named on the command line by a spec:

    package.module:function     a function importable from an installed module
    path/to/file.py:function    a function in a Python file
    path/to/reward_model_dir    a trained reward model (``RewardModel``), with its own tokenizer
    "a:0.7,b:f:0.3"             a weighted sum (``load_reward`` -> ``CombinedReward``)

Every source is called the same way, so a trainer or evaluator never asks what kind it has.
``load_reward_function`` and ``score`` are the single-function layer; ``load_reward`` builds
a weighted sum whose parts are returned one by one, to be logged on their own.

May import: errors, data, models.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from preflab.errors import ConfigError, NonFiniteReward

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
    """Call a reward function with the keyword arguments it accepts, and check that it kept
    the contract (one float per pair)."""
    values = list(fn(list(prompts), list(completions), **_accepted_kwargs(fn, kwargs)))
    if len(values) != len(completions):
        raise ConfigError(
            f"the reward function returned {len(values)} scores for {len(completions)} completions"
        )
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the reward function returned a value that is not a number: "
                          f"{str(exc)[:80]}", expected="one float per completion") from None
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise NonFiniteReward(f"the reward function {getattr(fn, '__name__', fn)!r} returned "
                              f"{values[bad[0]]} for completion {bad[0]} of {len(values)} "
                              f"({len(bad)} not finite)", expected="finite scores")
    return values


# --- Reward models, and weighted sums of several sources ------------------------------------
#
#     --reward rm_dir                       a trained reward model (a directory)
#     --reward mymod:harmless               a function
#     --reward "rm_dir:0.7,mymod:harmless:0.3"   a weighted sum; each part is logged on its own
#
# A weight is the text after the last colon when it reads as a number (default 1). A directory
# that holds a model (config.json) is a reward model, scored with its own tokenizer: the policy's
# text is decoded, re-tokenized the way the reward model was trained (prompt with special tokens,
# then the completion, then EOS where the completion ended with one) and scored at the last token.

MODEL_DIR_SUFFIXES = ("final", "adapter")


def parse_reward_specs(text: str, *, flag: str = "--reward") -> list[tuple[str, float]]:
    """``"a:0.7,b:f:0.3"`` -> ``[("a", 0.7), ("b:f", 0.3)]``; a missing weight is 1.0."""
    specs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        head, sep, tail = item.rpartition(":")
        weight = _as_float(tail) if sep and head else None
        spec, weight = (head, weight) if weight is not None else (item, 1.0)
        if not spec:
            raise ConfigError(f"{flag} {item[:80]!r} names no reward source",
                              expected="a reward-model directory or module:function, "
                                       "optionally followed by :WEIGHT")
        if not math.isfinite(weight):
            raise ConfigError(f"{flag}: the weight of {spec[:80]!r} is {weight}",
                              expected="a finite number after the last ':'")
        specs.append((spec, weight))
    if not specs:
        raise ConfigError(f"{flag} is empty", expected="at least one reward source")
    return specs


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def reward_model_path(spec: str) -> str | None:
    """The model directory ``spec`` names: itself, or a run directory's ``final/``; else None."""
    for candidate in (Path(spec), Path(spec) / "final"):
        if (candidate / "config.json").is_file():
            return str(candidate)
    return None


def is_reward_model_dir(spec: str) -> bool:
    return reward_model_path(spec) is not None


def check_reward_specs(text: str, *, flag: str = "--reward") -> None:
    """Fail early (before any model loads) on a spec that is neither a model nor a function."""
    for spec, _ in parse_reward_specs(text, flag=flag):
        if is_reward_model_dir(spec):
            continue
        if Path(spec).is_dir():
            raise ConfigError(f"{flag}: the directory holds no model (no config.json)", path=spec)
        target, sep, name = spec.rpartition(":")
        if not (sep and target and name):
            raise ConfigError(f"{flag} {spec!r} is neither a model directory nor a function",
                              expected="a reward-model directory, module:function or "
                                       "path/to/file.py:function")


class RewardModel:
    """A reward model as a reward function ``fn(prompts, completions, **kwargs)``.

    ``scorer(input_ids, attention_mask) -> [B]`` scores right-padded token rows with the
    reward model's ``tokenizer``; ``from_pretrained`` builds one from a model directory.
    ``ended_with_eos`` (one bool per completion) says which completions get the EOS token
    appended before scoring (all of them when it is not given: a finished text).
    Sequences longer than ``max_length`` keep their last tokens, where the score is read.
    """

    def __init__(self, tokenizer, scorer: Callable, *, device="cpu", batch_size: int = 16,
                 max_length: int | None = None, model=None) -> None:
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.model = model  # the module that holds the weights, for memory accounting

    @classmethod
    def from_pretrained(cls, path: str, *, device="cpu", dtype=None, batch_size: int = 16,
                        max_length: int | None = None, allow_pickle: bool = False,
                        trust_remote_code: bool = False,
                        attn_implementation: str = "auto") -> RewardModel:
        import functools

        import torch

        from preflab import models
        from preflab.models import load_sequence_classifier
        from preflab.models.heads import sequence_scores

        tokenizer = models.load_tokenizer(path, trust_remote_code=trust_remote_code)
        model = load_sequence_classifier(
            path, dtype=dtype or torch.float32, device=device, allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code, pad_token_id=tokenizer.pad_token_id,
            attn_implementation=attn_implementation,
        )
        model.eval().requires_grad_(False)
        max_length = max_length or getattr(model.config, "max_position_embeddings", None)
        return cls(tokenizer, functools.partial(sequence_scores, model), device=device,
                   batch_size=batch_size, max_length=max_length, model=model)

    def encode(self, prompt: str, completion: str, ended: bool = True) -> list[int]:
        tok = self.tokenizer
        ids = list(tok(prompt, add_special_tokens=True)["input_ids"])
        ids += list(tok(completion, add_special_tokens=False)["input_ids"])
        if ended and tok.eos_token_id is not None and (not ids or ids[-1] != tok.eos_token_id):
            ids.append(tok.eos_token_id)
        if self.max_length and len(ids) > self.max_length:
            ids = ids[-self.max_length:]
        return ids

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], *,
                 ended_with_eos: Sequence[bool] | None = None, **kwargs) -> list[float]:
        import torch

        from preflab.data import pad_sequences

        ended = list(ended_with_eos) if ended_with_eos is not None else [True] * len(prompts)
        rows = [self.encode(p, c, e) for p, c, e in zip(prompts, completions, ended)]
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                input_ids = pad_sequences(chunk, self.tokenizer.pad_token_id)
                lengths = torch.tensor([len(r) for r in chunk]).unsqueeze(1)
                mask = (torch.arange(input_ids.shape[1]).unsqueeze(0) < lengths).long()
                scores = self.scorer(input_ids.to(self.device), mask.to(self.device))
                out.extend(scores.float().cpu().tolist())
        return out


@dataclass
class RewardComponent:
    """One source of a combined reward: its logged name, spec, weight and function."""

    name: str
    spec: str
    weight: float
    fn: RewardFn
    kind: str  # "model" or "function"


def _accepted_kwargs(fn: RewardFn, kwargs: dict) -> dict:
    """The keyword arguments ``fn`` can take: all of them if it has ``**kwargs``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return kwargs
    names = {p.name for p in params}
    return {k: v for k, v in kwargs.items() if k in names}


class CombinedReward:
    """A weighted sum of reward sources: ``(total, {name: scores})`` for each batch.

    Each source gets the same prompts and completions, and the keyword arguments it accepts
    (all of them when it takes ``**kwargs``): a trainer passes ``ended_with_eos`` and may pass
    token ids. The components are returned unweighted, to be logged one by one.
    """

    def __init__(self, components: Sequence[RewardComponent]) -> None:
        if not components:
            raise ConfigError("a combined reward needs at least one source")
        self.components = list(components)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.components]

    def models(self) -> list:
        """The reward models this reward holds in memory (for accounting)."""
        return [c.fn.model for c in self.components
                if isinstance(c.fn, RewardModel) and c.fn.model is not None]

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 **kwargs) -> tuple[list[float], dict[str, list[float]]]:
        parts: dict[str, list[float]] = {}
        total = [0.0] * len(completions)
        for c in self.components:
            values = score(c.fn, prompts, completions, **kwargs)
            parts[c.name] = values
            total = [t + c.weight * v for t, v in zip(total, values)]
        return total, parts


def component_name(spec: str) -> str:
    """``runs/rm1/final`` -> ``rm1``; ``mymod:harmless`` -> ``harmless``."""
    if is_reward_model_dir(spec):
        path = Path(reward_model_path(spec)).absolute()
        return path.parent.name if path.name in MODEL_DIR_SUFFIXES else path.name
    return spec.rpartition(":")[2]


def load_reward(
    text: str,
    *,
    flag: str = "--reward",
    device="cpu",
    dtype=None,
    batch_size: int = 16,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    attn_implementation: str = "auto",
    overrides: dict[str, RewardFn] | None = None,
) -> CombinedReward:
    """A ``CombinedReward`` from ``--reward`` text; ``overrides`` maps a spec to a ready function
    (a trainer that already holds that reward model in another form, e.g. as an adapter)."""
    overrides = overrides or {}
    components: list[RewardComponent] = []
    for spec, weight in parse_reward_specs(text, flag=flag):
        name = component_name(spec)
        while name in {c.name for c in components}:
            name += "_2"
        if spec in overrides:
            fn, kind = overrides[spec], "model"
        elif is_reward_model_dir(spec):
            fn = RewardModel.from_pretrained(
                reward_model_path(spec), device=device, dtype=dtype, batch_size=batch_size,
                allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                attn_implementation=attn_implementation)
            kind = "model"
        else:
            fn, kind = load_reward_function(spec, flag=flag), "function"
        components.append(RewardComponent(name, spec, weight, fn, kind))
    return CombinedReward(components)
