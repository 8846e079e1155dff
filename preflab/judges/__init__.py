"""Judges: which of two completions of a prompt is better (AI feedback, RLAIF; Lee et al. 2023).

One interface, whoever judges::

    judge(prompts, completions_a, completions_b) -> list[float]     # P(a is better), in [0, 1]

Every judge keeps ``judge(p, b, a) == 1 - judge(p, a, b)`` (one that prefers a position
asks in both orders and averages) and gives 1/2 for identical completions. Each also has an
``identity`` (what changes its answers; never a secret) and a ``batch_size`` (pairs per
call that suit it). ``load_judge(spec)`` builds one from a spec:

    lm:PATH                 a causal LM (any HF directory or hub id) asked with a template;
                            reads p("A") against p("B"), both orders    (preflab.judges.lm)
    http:MODEL[@BASE_URL]   an OpenAI-compatible chat endpoint; votes in both orders
                            (preflab.judges.http)
    world:DIR               the built-in world's simulated annotators: noisy people
    world-gold:DIR          the built-in world's gold reward: 1 if gold(a) > gold(b), 0 if
                            less, 1/2 on a tie
    RUN_DIR, module:fn, file.py:fn, "a:0.7,b:0.3", reward:SPEC
                            a reward (``preflab.rewards.load_reward``): a ``preflab rm`` run,
                            a function, or a weighted sum; P = sigmoid(r_a - r_b)

``load_judge(spec, cache=FILE)`` wraps the judge in a ``CachedJudge`` (``judges.cache``):
answers are kept on disk as they come, so an interrupted labelling job loses nothing and a
repeated question is never asked twice.

May import: errors, models, rewards, world.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from preflab.errors import ConfigError
from preflab.judges.cache import CachedJudge, JudgeCache, JudgeError, fingerprint
from preflab.judges.template import DEFAULT_ANSWERS, DEFAULT_TEMPLATE
from preflab.world.annotators import sigmoid

__all__ = ["Judge", "JudgeOptions", "load_judge", "check_judge_spec", "JUDGE_KINDS",
           "RewardJudge", "WorldJudge", "GoldJudge", "CachedJudge", "JudgeCache", "JudgeError"]


class Judge(Protocol):
    identity: str
    batch_size: int

    def __call__(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        ...


@dataclass
class JudgeOptions:
    """Settings the judges take (``preflab label --help`` describes each flag)."""

    template: str = DEFAULT_TEMPLATE
    answers: tuple[str, str] = DEFAULT_ANSWERS
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    retries: int = 4
    concurrency: int = 4
    backoff: float = 1.0
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    allow_pickle: bool = False
    trust_remote_code: bool = False
    flag: str = "--judge"


# --- rewards as judges -----------------------------------------------------------------------
class RewardJudge:
    """P(a better) = sigmoid(r(prompt, a) - r(prompt, b)) for a reward ``fn(prompts,
    completions) -> scores`` (or a ``CombinedReward``, whose weighted total is used).
    Each distinct (prompt, completion) of a call is scored once."""

    def __init__(self, reward: Callable, *, identity: str, batch_size: int = 16) -> None:
        self.reward = reward
        self.identity = identity
        self.batch_size = batch_size

    def __call__(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        from preflab.rewards import score

        items = list(dict.fromkeys([*zip(prompts, a), *zip(prompts, b)]))
        if hasattr(self.reward, "components"):  # a CombinedReward: (total, parts)
            values = self.reward([p for p, _ in items], [c for _, c in items])[0]
        else:
            values = score(self.reward, [p for p, _ in items], [c for _, c in items])
        r = dict(zip(items, values))
        return [sigmoid(r[(p, x)] - r[(p, y)]) for p, x, y in zip(prompts, a, b)]


def _reward_identity(spec: str, flag: str) -> str:
    from preflab.rewards import is_reward_model_dir, parse_reward_specs, reward_model_path

    parts = []
    for part, weight in parse_reward_specs(spec, flag=flag):
        target = part.rpartition(":")[0]
        if is_reward_model_dir(part):
            what = fingerprint(reward_model_path(part))
        elif target.endswith(".py"):
            what = f"{fingerprint(target)}:{part.rpartition(':')[2]}"
        else:
            what = part
        parts.append(f"{what}*{weight!r}")
    return "reward|" + ",".join(parts)


def _build_reward(spec: str, o: JudgeOptions) -> RewardJudge:
    from preflab import models
    from preflab.rewards import load_reward

    device = models.resolve_device(o.device)
    reward = load_reward(spec, flag=o.flag, device=device,
                         dtype=models.resolve_dtype(o.dtype, device), batch_size=o.batch_size,
                         allow_pickle=o.allow_pickle, trust_remote_code=o.trust_remote_code)
    return RewardJudge(reward, identity=_reward_identity(spec, o.flag), batch_size=o.batch_size)


def _check_reward(spec: str, o: JudgeOptions) -> None:
    from preflab.rewards import check_reward_specs

    check_reward_specs(spec, flag=o.flag)


# --- the built-in world's annotators and gold reward ------------------------------------------
class WorldJudge:
    """The world's simulated annotators (``preflab.world.annotators``) as a judge.

    A person's answer is a vote, so P is 1 or 0: the annotator's Bradley-Terry draw on the
    gold reward (with the world's temperature, flip rate and length bias). Each pair's draw
    is seeded by ``seed`` and the pair itself (in canonical order), so the same pair gets the
    same answer in any batch, order or run, and ``judge(p, b, a) == 1 - judge(p, a, b)``.
    """

    def __init__(self, world, *, seed: int = 0, batch_size: int = 256) -> None:
        self.world = world
        self.seed = seed
        self.batch_size = batch_size
        settings = world.annotator().settings()
        self.identity = (f"world|{fingerprint(world.root / 'world.json')}|seed={seed}|"
                         f"annotator={sorted(settings.items())}")

    def _pair_seed(self, prompt: str, x: str, y: str) -> int:
        text = "\x00".join((str(self.seed), prompt, x, y))
        return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8],
                              "big")

    def __call__(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        gold_a = self.world.gold_reward(list(prompts), list(a))
        gold_b = self.world.gold_reward(list(prompts), list(b))
        out = []
        for p, x, y, gx, gy in zip(prompts, a, b, gold_a, gold_b):
            if x == y:
                out.append(0.5)
                continue
            (lo, g_lo), (hi, g_hi) = sorted(((x, gx), (y, gy)))
            label = self.world.annotator(seed=self._pair_seed(p, lo, hi)).label_pair(
                p, lo, hi, g_lo, g_hi)
            p_lo = 1.0 if label.chosen == lo else 0.0
            out.append(p_lo if x == lo else 1.0 - p_lo)
        return out


class GoldJudge:
    """The world's gold reward as a judge: 1 if gold(a) > gold(b), 0 if less, 1/2 on a tie
    (within ``GOLD_TIE``). The truth no trained model sees, for measuring agreement."""

    def __init__(self, world, *, batch_size: int = 256) -> None:
        self.world = world
        self.batch_size = batch_size
        self.identity = f"world-gold|{fingerprint(world.root / 'world.json')}"

    def __call__(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        from preflab.world.annotators import GOLD_TIE

        gold_a = self.world.gold_reward(list(prompts), list(a))
        gold_b = self.world.gold_reward(list(prompts), list(b))
        return [0.5 if abs(x - y) <= GOLD_TIE else float(x > y) for x, y in zip(gold_a, gold_b)]


def _load_world(path: str, o: JudgeOptions):
    from preflab.world import load_world

    if not path:
        raise ConfigError(f"{o.flag} names no world directory",
                          expected="world:DIR or world-gold:DIR")
    return load_world(path)


def _check_world(path: str, o: JudgeOptions) -> None:
    _load_world(path, o)


# --- the registry: each kind of spec, what builds it, what checks it early ---------------------
@dataclass(frozen=True)
class JudgeKind:
    """A kind of spec: what builds the judge, what checks the spec before anything loads."""

    build: Callable[[str, JudgeOptions], Judge]
    check: Callable[[str, JudgeOptions], None]
    sends_text_away: bool = False  # prompts and completions leave this machine
    identity: Callable[[str, JudgeOptions], str] | None = None
    """Where building loads a model: the identity without loading it, so a cached judge is
    built only when the cache lacks an answer (``Deferred``)."""


class Deferred:
    """A judge built on its first call: a run whose every answer is in the cache never
    loads the model."""

    def __init__(self, build: Callable[[], Judge], identity: str, batch_size: int) -> None:
        self.build, self.identity, self.batch_size = build, identity, batch_size
        self.judge: Judge | None = None

    def __call__(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        if self.judge is None:
            self.judge = self.build()
            if self.judge.identity != self.identity:  # a bug, not the user's input
                raise AssertionError(f"judge identity {self.judge.identity!r} is not the "
                                     f"announced {self.identity!r}")
        return self.judge(prompts, a, b)


def _build_lm(path: str, o: JudgeOptions) -> Judge:
    from preflab.judges.lm import LMJudge

    return LMJudge.from_pretrained(path, template=o.template, answers=o.answers,
                                   batch_size=o.batch_size, device=o.device, dtype=o.dtype,
                                   allow_pickle=o.allow_pickle,
                                   trust_remote_code=o.trust_remote_code)


def _lm_identity(path: str, o: JudgeOptions) -> str:
    from preflab.judges.lm import lm_identity

    return lm_identity(path, o.template, o.answers)


def _check_lm(path: str, o: JudgeOptions) -> None:
    from preflab.models import check_model_source

    if not path:
        raise ConfigError(f"{o.flag} lm: names no model", expected="lm:PATH_OR_HUB_ID")
    check_model_source(path, flag=o.flag, network=False)


HTTP_SPEC = re.compile(r"^(?P<model>.*?)(?:@(?P<url>https?://.*))?$", re.DOTALL)


def _http_parts(rest: str, o: JudgeOptions) -> tuple[str, str]:
    match = HTTP_SPEC.match(rest)
    return match["model"], match["url"] or o.base_url


def _build_http(rest: str, o: JudgeOptions) -> Judge:
    from preflab.judges.http import HTTPJudge

    model, url = _http_parts(rest, o)
    return HTTPJudge(model, base_url=url, api_key_env=o.api_key_env, template=o.template,
                     answers=o.answers, timeout=o.timeout, retries=o.retries,
                     concurrency=o.concurrency, backoff=o.backoff)


def _check_http(rest: str, o: JudgeOptions) -> None:
    from preflab.judges.http import check_base_url

    model, url = _http_parts(rest, o)
    if not model:
        raise ConfigError(f"{o.flag} http: names no model",
                          expected="http:MODEL or http:MODEL@BASE_URL")
    check_base_url(url)


JUDGE_KINDS: dict[str, JudgeKind] = {
    "lm": JudgeKind(_build_lm, _check_lm, identity=_lm_identity),
    "http": JudgeKind(_build_http, _check_http, sends_text_away=True),
    "world": JudgeKind(lambda d, o: WorldJudge(_load_world(d, o), seed=o.seed), _check_world),
    "world-gold": JudgeKind(lambda d, o: GoldJudge(_load_world(d, o)), _check_world),
    "reward": JudgeKind(_build_reward, _check_reward,
                        identity=lambda spec, o: _reward_identity(spec, o.flag)),
}


def parse_judge_spec(spec: str) -> tuple[JudgeKind, str]:
    """``"lm:DIR"`` -> (the lm kind, "DIR"); a spec with no known prefix is a reward spec."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in JUDGE_KINDS:
        return JUDGE_KINDS[prefix], rest
    return JUDGE_KINDS["reward"], spec


def check_judge_spec(spec: str, options: JudgeOptions | None = None) -> JudgeKind:
    """Fail early, before any model loads, on a spec that cannot work; return its kind."""
    options = options or JudgeOptions()
    if not spec.strip():
        raise ConfigError(f"{options.flag} is empty", expected="a judge spec: lm:PATH, "
                          "http:MODEL, world:DIR, world-gold:DIR, or a reward spec")
    kind, rest = parse_judge_spec(spec)
    kind.check(rest, options)
    return kind


def load_judge(spec: str, *, cache: str | Path | JudgeCache | None = None,
               options: JudgeOptions | None = None, **settings) -> Judge:
    """The judge ``spec`` names, built with ``options`` (or ``JudgeOptions(**settings)``);
    wrapped in a ``CachedJudge`` when ``cache`` (a file or a ``JudgeCache``) is given."""
    options = options or JudgeOptions(**settings)
    kind = check_judge_spec(spec, options)
    rest = parse_judge_spec(spec)[1]
    if cache is None:
        return kind.build(rest, options)
    if kind.identity is not None:
        judge = Deferred(lambda: kind.build(rest, options), kind.identity(rest, options),
                         options.batch_size)
    else:
        judge = kind.build(rest, options)
    return CachedJudge(judge, cache if isinstance(cache, JudgeCache) else JudgeCache(cache))
