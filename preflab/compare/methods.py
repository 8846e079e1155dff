"""The methods ``preflab compare`` can run: a registry, so adding one never touches the harness.

A method is a name, the road it belongs to, and a ``build`` function that turns the shared
inputs (the SFT checkpoint, the pairs, the prompts), the per-command hyperparameters and a
``Variant`` (seed, share of the pairs, learning-rate and beta/kl_coef multipliers, objective)
into the ordinary ``preflab`` commands to run, as ``Stage``s. The last stage of a method
writes the policy that gets scored. Stages are named by what they compute, so two methods
that need the same reward model (PPO at several KL coefficients) share one run.

The stages follow from each method's shape: ``direct`` (SFT -> the command, e.g. ``dpo --loss
ipo``), ``rlhf`` (SFT -> rm -> the command with ``--reward``: ppo, rloo, grpo, reinforce-pp),
``online`` (SFT -> rm -> the command with ``--judge``: online-dpo); best-of-n is SFT -> rm ->
bon, no training (the SFT model's samples, the reward model's favourite of n; scored as
best-of-max(n)). ``preflab compare --help`` lists the methods; docs/compare.md describes each.

The training methods come from ``preflab.algorithms`` (each algorithm file's ``METHOD``
declares how compare runs it, ``Compared``); best-of-n, which trains nothing, is declared
here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from preflab.errors import ConfigError

DIRECT, RLHF = "direct", "rlhf"


@dataclass(frozen=True)
class Variant:
    """What changes between runs of one method."""

    seed: int = 0
    pairs: str = "all"
    """Which labelled pairs: ``all``, a share such as ``1/16``, or ``new`` (the changed
    objective's labels, for the flexibility row)."""
    lr_scale: float = 1.0
    strength_scale: float = 1.0
    """Multiplies beta (direct road) or kl_coef (RLHF road)."""
    steps_scale: float = 1.0
    continue_from: str = ""
    """Key of a finished run of this method to continue from (the RLHF road's answer to a
    changed objective); empty: start from the SFT checkpoint."""
    probe: bool = False
    """A short run kept only for its memory figures (never scored)."""
    tag: str = ""

    def suffix(self) -> str:
        parts = [f"s{self.seed}"]
        if self.pairs != "all":
            parts.append("p" + self.pairs.replace("/", "of"))
        if self.lr_scale != 1:
            parts.append(f"lr{self.lr_scale:g}")
        if self.strength_scale != 1:
            parts.append(f"k{self.strength_scale:g}")
        if self.steps_scale != 1:
            parts.append(f"x{self.steps_scale:.4g}")
        if self.probe:
            parts.append("probe")
        if self.tag:
            parts.append(self.tag)
        return "-".join(parts)


@dataclass(frozen=True)
class Inputs:
    """What every compared run starts from (paths), and what it is evaluated with."""

    sft: str
    pairs: dict[str, str]
    prompts: str
    eval_prompts: str
    gold: str = ""
    """Reward spec logged as ``eval/gold_reward`` during training (empty: none)."""
    max_length: int = 512
    eval_num_prompts: int = 64
    max_new_tokens: int = 48
    """Longest completion sampled: at evaluation, and by every method that samples in training
    (the RL methods' ``--response-length``, online DPO's ``--max-new-tokens``)."""


@dataclass(frozen=True)
class Stage:
    """One ordinary preflab command; ``--output-dir`` is ``CMP/runs/<key>``."""

    key: str
    command: str
    args: tuple[str, ...]
    after: tuple[str, ...] = ()
    trains: tuple[str, ...] = ()
    """Model roles whose weights this stage trains: policy, reward, value."""
    hyper: str = ""
    """The hyperparameter section of this stage (``dpo``, ``rm``, ``ppo``, ...)."""
    resumable: bool = True
    """Whether the command takes ``--resume`` (a trainer); else a rerun starts over."""
    score_policy: str = ""
    """For the method's last stage: the model the score job samples from (default: this
    stage's ``final``), and ``score_args``, more flags for the score job (best-of-n)."""
    score_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    road: str
    description: str
    memory_label: str
    build: Callable[[Inputs, dict, Variant], list[Stage]] = field(repr=False)
    strength: str = "beta"
    """The flag that ``Variant.strength_scale`` multiplies."""
    sections: tuple[str, ...] = ()
    """The hyperparameter sections its stages read (for counting exposed knobs)."""


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}", field="methods",
                          expected=" | ".join(REGISTRY))
    return REGISTRY[name]


def flags(values: dict) -> list[str]:
    """``{"learning_rate": 1e-3, "progress": False}`` -> ``--learning-rate 0.001 --no-progress``."""
    out: list[str] = []
    for key, value in values.items():
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(name if value else "--no-" + key.replace("_", "-"))
        else:
            out += [name, str(value)]
    return out


def _scaled(hp: dict, variant: Variant, strength: str) -> dict:
    values = dict(hp)
    if "learning_rate" in values:
        values["learning_rate"] = float(values["learning_rate"]) * variant.lr_scale
    if strength in values:
        values[strength] = float(values[strength]) * variant.strength_scale
    if "max_steps" in values and variant.steps_scale != 1:
        values["max_steps"] = max(1, round(int(values["max_steps"]) * variant.steps_scale))
    if variant.probe:
        values.update(max_steps=min(int(values.get("max_steps", 10)), 10), eval_every=0)
    return values


def _pairs(inputs: Inputs, variant: Variant) -> str:
    if variant.pairs not in inputs.pairs:
        raise ConfigError(f"no pairs prepared for {variant.pairs!r}", field="pairs",
                          expected=" | ".join(inputs.pairs))
    return inputs.pairs[variant.pairs]


def _eval_flags(inputs: Inputs) -> dict:
    values = {"eval_prompts": inputs.eval_prompts, "eval_num_prompts": inputs.eval_num_prompts,
              "eval_max_new_tokens": inputs.max_new_tokens}
    if inputs.gold:
        values["gold_reward"] = inputs.gold
    return values


def _direct(name: str, section: str, extra: dict, command: str) -> Callable:
    def build(inputs: Inputs, hp: dict, variant: Variant) -> list[Stage]:
        values = {"model": inputs.sft, "data": _pairs(inputs, variant), "seed": variant.seed,
                  "max_length": inputs.max_length, **_eval_flags(inputs),
                  **_scaled(hp.get(section, {}), variant, "beta"), **extra}
        if variant.probe:
            values.pop("gold_reward", None)
            values["eval_prompts"] = ""
        return [Stage(f"{name}-{variant.suffix()}", command, tuple(flags(values)),
                      trains=("policy",), hyper=section)]

    return build


def _reward_model(inputs: Inputs, hp: dict, variant: Variant, rm_section: str) -> Stage:
    """The reward-model stage; its key says what it depends on, so methods that need the same
    reward model (PPO at several KL coefficients, online DPO) share one run."""
    rm_variant = Variant(seed=variant.seed, pairs=variant.pairs)
    rm_key = f"{rm_section}-{rm_variant.suffix()}"
    rm_values = {"model": inputs.sft, "data": _pairs(inputs, variant), "seed": variant.seed,
                 "max_length": inputs.max_length, **hp.get(rm_section, {})}
    if variant.probe:
        rm_values["max_steps"] = min(int(rm_values.get("max_steps", 10)), 10)
        rm_key = f"{rm_section}-{variant.suffix()}"
    return Stage(rm_key, "rm", tuple(flags(rm_values)), trains=("reward",), hyper=rm_section)


def _online(name: str, rm_section: str, section: str, command: str) -> Callable:
    """The article's hybrid: a reward model trained on the pairs labels the policy's own
    samples for DPO, round after round (``preflab online-dpo --judge RM``)."""
    def build(inputs: Inputs, hp: dict, variant: Variant) -> list[Stage]:
        rm = _reward_model(inputs, hp, variant, rm_section)
        values = {"model": inputs.sft, "data": inputs.prompts, "judge": f"@{rm.key}",
                  "seed": variant.seed, "max_length": inputs.max_length,
                  "max_new_tokens": inputs.max_new_tokens, **_eval_flags(inputs),
                  **_scaled(hp.get(section, {}), variant, "beta")}
        if variant.probe:
            values.pop("gold_reward", None)
            values.update(eval_prompts="", rounds=1, steps_per_round=2, pairs_per_round=8)
        return [rm, Stage(f"{name}-{variant.suffix()}", command, tuple(flags(values)),
                          after=(rm.key,), trains=("policy",), hyper=section)]

    return build


def _rlhf(name: str, rm_section: str, ppo_section: str, extra_ppo: dict, command: str,
          trains: tuple[str, ...]):
    """SFT -> reward model -> an RL trainer on the prompts (``command``: ppo, rloo, grpo,
    reinforce-pp)."""
    def build(inputs: Inputs, hp: dict, variant: Variant) -> list[Stage]:
        rm = _reward_model(inputs, hp, variant, rm_section)
        rm_key = rm.key
        # One length: the RL method samples its rollouts at the length every policy is scored
        # at (compare's --max-new-tokens), so none is judged on lengths it never produced.
        ppo_values = {"model": inputs.sft, "data": inputs.prompts, "reward": f"@{rm_key}",
                      "seed": variant.seed, "max_length": inputs.max_length,
                      **_eval_flags(inputs), **_scaled(hp.get(ppo_section, {}), variant, "kl_coef"),
                      "response_length": inputs.max_new_tokens, **extra_ppo}
        after = [rm_key]
        if variant.continue_from:  # the same road, continued with the new reward model
            ppo_values.update(model=f"@{variant.continue_from}/final", ref_model=inputs.sft)
            if "value" in trains:
                ppo_values["value_model"] = f"@{variant.continue_from}/final/value"
            after.append(variant.continue_from)
        if variant.probe:
            ppo_values.pop("gold_reward", None)
            ppo_values.update(eval_num_prompts=1, max_steps=2)
        ppo = Stage(f"{name}-{variant.suffix()}", command, tuple(flags(ppo_values)),
                    after=tuple(after), trains=trains, hyper=ppo_section)
        return [rm, ppo]

    return build


def _best_of_n(name: str, rm_section: str, section: str) -> Callable:
    """No training: the SFT model's samples, the reward model's favourite of n. The ``bon``
    stage measures every n on the evaluation prompts (its curve is the method's frontier); the
    score job scores best-of-max(n) the way it scores every trained policy."""
    def build(inputs: Inputs, hp: dict, variant: Variant) -> list[Stage]:
        rm = _reward_model(inputs, hp, variant, rm_section)
        values = {"model": inputs.sft, "prompts": inputs.eval_prompts, "reward": f"@{rm.key}",
                  "seed": variant.seed, "max_length": inputs.max_length,
                  "num_prompts": inputs.eval_num_prompts, "max_new_tokens": inputs.max_new_tokens,
                  **{k: v for k, v in hp.get(section, {}).items() if k not in ("log_every",)}}
        if inputs.gold:
            values["gold_reward"] = inputs.gold
        if variant.probe:
            values.pop("gold_reward", None)
            values.update(num_prompts=2, n="1,2")
        n = max(int(x) for x in str(values.get("n", "1,2,4,8,16")).split(","))
        return [rm, Stage(f"{name}-{variant.suffix()}", "bon", tuple(flags(values)),
                          after=(rm.key,), hyper=section, resumable=False,
                          score_policy=inputs.sft,
                          score_args=("--best-of", str(n), "--proxy", f"@{rm.key}"))]

    return build


def _from_registry(method, entry) -> Method:
    """A training method's compare entry (``preflab.algorithms.Compared``) as a compare Method."""
    section = entry.hyper_section
    if entry.shape == "direct":
        build = _direct(entry.name, section, entry.flags, command=method.name)
        sections: tuple[str, ...] = (section,)
    elif entry.shape == "online":
        build = _online(entry.name, entry.reward_section, section, command=method.name)
        sections = (entry.reward_section, section)
    else:
        build = _rlhf(entry.name, entry.reward_section, section, entry.flags,
                      command=method.name, trains=entry.trains or method.trains)
        sections = (entry.reward_section, section)
    road = DIRECT if method.road == "direct" else RLHF
    return Method(entry.name, entry.label, road, entry.description, entry.memory_label, build,
                  strength="beta" if road == DIRECT else "kl_coef", sections=sections)


def _register_all() -> None:
    from preflab.algorithms import compared

    for method, entry in compared().values():
        register(_from_registry(method, entry))
    # not a training method: the reward model's favourite of the SFT model's samples
    register(Method("bon", "Best-of-n (RM)", RLHF, "no training: sample n from the SFT model and "
                    "keep the reward model's favourite (the reward model shared with PPO); two "
                    "models: policy (sampling only) and reward", "best-of-n: SFT + reward model",
                    _best_of_n("bon", "rm", "bon"), strength="n", sections=("rm", "bon")))


_register_all()


def with_variant(variant: Variant, **changes) -> Variant:
    return replace(variant, **changes)
