"""``preflab compare``'s settings: its flags, the presets, and the hyperparameters per stage.

The presets say which experiments run (``preflab.compare.design`` turns them into jobs):

    quick      each main method once, short runs of two more kept for their memory figures
    standard   every method; 3 seeds of DPO and PPO; fewer pairs; a changed objective; hacking
    full       standard, 3 seeds of every method, the hyperparameter sensitivity grid, the
               frontier swept over beta and kl_coef (3 seeds each) and 3 seeds of hacking
    real-cpu   a real pretrained model of about 100M parameters on a CPU, your data: DPO, the
               RLHF road (reward model, then PPO) and GRPO, one seed each, short runs
               (``REAL_CPU_HYPER``), within an hour on 2 cores for SmolLM2-135M

Expected times (the progress line's ETA, and the default time budget of each run) come from a
preset's priors, measured at one model size, scaled by the compared model's parameters.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from preflab.compare.methods import REGISTRY, get_method
from preflab.config import arg, config_arg, split_arg
from preflab.errors import ConfigError

SHARES = ("1/16", "1/8", "1/4", "1/2")
HACK_SHARE = "1/4"  # the reward-hacking runs' weak preference data: few pairs
HACK_STRENGTH = 0.02  # ... and their regulariser (beta, kl_coef): 50x smaller
GRID = (1 / 3, 1.0, 3.0)

# Hyperparameters per stage. Each training method declares its own in its algorithm file
# (``preflab.algorithms``: ``Compared.world``, ``.user``, ``.real_cpu``); here are compare's
# own stages: the SFT model every method starts from, the reward models, best-of-n.
# For the built-in world's model (1.1M parameters, trained from scratch): the DPO paper's lr
# of 1e-6 is for pretrained billions-parameter models and does not move it.
_RM_WORLD = {"learning_rate": 1e-3, "num_epochs": 2, "batch_size": 32, "warmup_ratio": 0.05,
             "eval_fraction": 0.05}
STAGE_HYPER: dict[str, dict[str, dict]] = {
    "world": {
        "sft": {},  # the world's own sft.yaml
        "rm": _RM_WORLD,
        "rm-lora": {**_RM_WORLD, "lora_rank": 32},
        # best-of-16 is scored (KL bound 1.83 nats); the curve over n is the frontier
        "bon": {"n": "1,2,4,8,16", "batch_size": 64},
    },
    # On the user's data: each command's own defaults (the papers' values).
    "user": {"sft": {}, "rm": {}, "rm-lora": {"lora_rank": 16}, "bon": {"n": "1,2,4,8,16"}},
    # A real pretrained model (sized on SmolLM2-135M-Instruct, 2 CPU cores) from its own
    # checkpoint: every method is short, so the learning rates are above the papers' (the DPO
    # paper's 1e-6 is for batch 64 over thousands of steps); full fine-tuning, as the article
    # compares it.
    "real_cpu": {"rm": {"learning_rate": 1e-5, "num_epochs": 1, "batch_size": 8,
                        "warmup_ratio": 0.05, "eval_fraction": 0.1}},
}


def _hyper(mode: str) -> dict[str, dict]:
    """Flags per stage in ``mode`` (world, user, real_cpu): compare's stages, then each
    compared method's section, as its algorithm file declares it."""
    from preflab.algorithms import compared

    out = dict(STAGE_HYPER[mode])
    for _, entry in compared().values():
        values = getattr(entry, mode)
        if values is not None and entry.hyper_section == entry.name:  # not a borrowed section
            out[entry.name] = dict(values)
    return out


WORLD_HYPER = _hyper("world")
USER_HYPER = _hyper("user")
REAL_CPU_HYPER = _hyper("real_cpu")
COMMON = {"log_every": 10, "progress": False}
# The lengths every sampling method and the evaluation share (--max-new-tokens); set per stage,
# one method would be scored at lengths it never produced.
LENGTH_KEYS = ("response_length", "max_new_tokens", "eval_max_new_tokens")
WORLD_PARAMS = 1_100_000  # the built-in world's model, which PRIOR_SECONDS were measured on


@dataclass(frozen=True)
class Preset:
    methods: tuple[str, ...]
    probes: tuple[str, ...] = ()
    seeds: int = 1
    seed_methods: tuple[str, ...] = ()
    shares: tuple[str, ...] = ()
    share_methods: tuple[str, ...] = ("dpo", "ppo")
    sensitivity_methods: tuple[str, ...] = ()
    flexibility: bool = False
    hacking: bool = False
    hacking_seeds: int = 1
    """Seeds of the reward-hacking runs (each road under the same low regularisation)."""
    frontier_methods: tuple[str, ...] = ()
    """Methods swept over beta or kl_coef x GRID at their base learning rate, ``seeds`` seeds
    at each setting: the reward-KL frontier with intervals."""
    pair_prompts: int = 1024
    eval_prompts: int = 128
    eval_samples: int = 4
    steps_scale: float = 1.0
    hyper: dict = dataclasses.field(default_factory=dict)
    """Flags per stage over the mode's defaults (WORLD_HYPER or USER_HYPER)."""
    max_new_tokens: int = 0
    """Longest sampled completion (0: the mode's default)."""
    prior_seconds: dict | None = None
    """Seconds per job kind at ``prior_params`` parameters (None: ``harness.prior_seconds()``)."""
    prior_params: int = WORLD_PARAMS


ALL_METHODS = ("dpo", "ipo", "simpo", "dpo-precomputed", "ppo", "ppo-shared")
# Registered, and run when asked for with --methods; in no preset yet (their times are measured).
EXTRA_METHODS = tuple(name for name in REGISTRY if name not in ALL_METHODS)
PRESETS = {
    "quick": Preset(methods=("dpo", "ipo", "ppo", "ppo-shared"),
                    probes=("dpo-precomputed", "simpo"), pair_prompts=768,
                    steps_scale=2 / 3),
    "standard": Preset(methods=ALL_METHODS, seeds=3, seed_methods=("dpo", "ppo"),
                       shares=SHARES, flexibility=True, hacking=True),
    "full": Preset(methods=ALL_METHODS, seeds=3, seed_methods=ALL_METHODS, shares=SHARES,
                   sensitivity_methods=("dpo", "ppo"), flexibility=True, hacking=True,
                   hacking_seeds=3, frontier_methods=("dpo", "ppo")),
    "real-cpu": Preset(methods=("dpo", "ppo", "grpo"), eval_prompts=32, eval_samples=2,
                       max_new_tokens=64, hyper=REAL_CPU_HYPER, prior_params=134_515_008,
                       # measured by `make demo-real` on SmolLM2-135M, 2 cores, two runs at a
                       # time on one thread each (docs/real-model.md)
                       prior_seconds={"data": 2, "convert": 22, "rm": 454, "dpo": 807,
                                      "ppo": 627, "grpo": 457, "score": 165}),
}


@dataclass
class CompareConfig:
    """``preflab compare``: both roads on the same SFT checkpoint, measured row by row."""

    output_dir: str = arg("", "Where everything goes: runs/, scores/, figures/, results.json, "
                          "report.md, report.html.", path="output")
    world: str = arg("", "Built-in world directory; built there when it holds none. Give this, "
                     "or --model, --pairs and --prompts for your own data.")
    model: str = arg("", "Your SFT checkpoint (a model directory, a .gguf file or a hub id): "
                     "every compared method starts from it.",
                     path="model")
    pairs: str = arg("", "Your preference pairs (prompt, chosen, rejected): a data file, a "
                     "directory of them, or a hub dataset name.", path="data")
    pairs_split: str = split_arg("--pairs", "train_prefs")
    pairs_config: str = config_arg("--pairs")
    prompts: str = arg("", "Your prompts (unlabelled: PPO trains on them; a share is held out "
                       "for evaluation): a data file, a directory of them, or a hub dataset "
                       "name.", path="data")
    prompts_split: str = arg("", "Split of --prompts to read, as --pairs-split (e.g. train_gen: "
                             "a dataset's prompts often sit in another split than its pairs).")
    prompts_config: str = config_arg("--prompts")
    gold_reward: str = arg("", "A reward you trust more than a judge model: module:function, "
                           "file.py:function or a reward-model directory (your data only). A "
                           "function runs as Python code with your rights (file.py: that file), "
                           "also when a shared --config names it: see docs/security.md.")
    preset: str = arg("standard", "How much to run: quick (one seed, the main methods, "
                      "minutes on 2 CPU cores for the world; docs/compare.md has the measured "
                      "time), standard (3 seeds of DPO and PPO, every method, sample "
                      "efficiency, flexibility, reward hacking for both roads), full (standard, "
                      "3 seeds of every method, the hyperparameter sensitivity grid, the "
                      "frontier swept over beta and kl_coef, 3 seeds of reward hacking), "
                      "real-cpu (your data on a real ~100M model on a CPU: DPO, reward model "
                      "then PPO, and GRPO, one seed each, short runs).",
                      choices=tuple(PRESETS))
    methods: str = arg("", "Comma-separated methods (default: the preset's). Known: "
                       + ", ".join(ALL_METHODS + EXTRA_METHODS) + ".")
    seeds: int = arg(0, "Seeds for the stability row (0: the preset's).", ge=0)
    jobs: int = arg(0, "Runs at a time; 0: one on a machine with a GPU (runs would share it), "
                    "else one per CPU core up to 4. Each run gets --threads CPU threads.", ge=0)
    threads: int = arg(0, "CPU threads per run (OMP_NUM_THREADS); 0: the cores shared by the runs "
                       "that can run at once (a run that runs alone gets them all).", ge=0)
    launcher: str = arg("", "Prefix for every training command, e.g. 'torchrun "
                        "--nproc-per-node 8' or 'accelerate launch'.")
    time_budget: float = arg(0.0, "Seconds one run may take before it is stopped and recorded "
                             "as timed out; 0: five times the run's expected time (the preset's "
                             "prior, scaled by the model's parameters), at least an hour.", ge=0)
    fresh: bool = arg(False, "Run everything again instead of reusing finished runs.")
    dry_run: bool = arg(False, "Print every command (in dependency order) and run nothing.")
    gpu_memory: str = arg("", "Your GPU memory (e.g. 80GB): the recommendation checks which "
                          "methods fit for the compared model (preflab plan).")
    have: str = arg("pairs", "What you have most of: preference pairs, or prompts with few "
                    "labels (for the recommendation).", choices=("pairs", "prompts"))
    objective_may_change: bool = arg(False, "Your objective is likely to change after "
                                     "deployment (for the recommendation).")
    eval_prompts: int = arg(0, "Held-out prompts each policy is scored on (0: the preset's).",
                            ge=0)
    eval_samples: int = arg(0, "Samples per held-out prompt (0: the preset's).", ge=0)
    pair_prompts: int = arg(0, "World: prompts sampled for preference pairs (0: the preset's).",
                            ge=0)
    judge_share: float = arg(0.2, "Your data: share of the pairs held out for the judge reward "
                             "model.", gt=0, lt=1)
    eval_share: float = arg(0.1, "Your data: share of the prompts held out for evaluation.",
                            gt=0, lt=1)
    harmlessness_weight: float = arg(1.0, "World: weight w of the changed objective, gold + "
                                     "w x harmlessness (flexibility row).", gt=0)
    pareto_weights: str = arg("", "World: several objectives. Harmlessness weights w, comma-"
                              "separated (e.g. 0,1,3): for each, the pairs are labelled again "
                              "under gold + w x harmlessness and DPO and the RLHF road (ppo) "
                              "learn from them; the report draws each road's front of gold "
                              "against harmlessness. Empty: no sweep.")
    kl_bound: float = arg(10.0, "The alignment-quality row compares each road's best setting "
                          "whose mean sampled KL to SFT is at most this many nats; the "
                          "frontier's tests use 1, 3 and 10.", gt=0)
    kl_blowup: float = arg(10.0, "eval/kl above this many nats counts as a KL blow-up.", gt=0)
    max_length: int = arg(0, "Longest sequence in tokens (0: 64 on the world, 512 otherwise).",
                          ge=2, also=(0,))
    max_new_tokens: int = arg(0, "Longest completion sampled: by the RL methods and online DPO "
                              "in training, and when every policy is evaluated, so each is "
                              "scored at the lengths it was trained to produce (0: the "
                              "preset's; 48 on the world, 128 otherwise).", ge=0)
    progress: bool = arg(True, "Show the live progress line.")
    hyperparameters: dict = arg({}, "YAML only: flags per stage, e.g. {dpo: {beta: 0.1}, "
                                "ppo: {kl_coef: 0.02}}; sections: " + ", ".join(WORLD_HYPER) + ".")

    def parallel_runs(self) -> int:
        """``--jobs``, or the default it stands for when 0."""
        if self.jobs:
            return self.jobs
        import os

        import torch

        if torch.cuda.is_available():
            return 1
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, min(4, cores or 1))

    @property
    def mode(self) -> str:
        return "world" if self.world else "data"

    def validate(self) -> None:
        if not self.output_dir:
            raise ConfigError("--output-dir is required", field="output_dir")
        user = [self.model, self.pairs, self.prompts]
        if self.world and any(user):
            raise ConfigError("give --world, or --model with --pairs and --prompts, not both",
                              field="world")
        if not self.world and not all(user):
            raise ConfigError("say what to compare on: --world DIR (the built-in task), or "
                              "--model SFT_MODEL --pairs PAIRS --prompts PROMPTS",
                              field="world")
        self.validate_splits()
        if self.pareto_weights:
            if not self.world:
                raise ConfigError("--pareto-weights needs the world's two objectives (gold and "
                                  "harmlessness); give --world", field="pareto_weights")
            self.pareto()
        if self.world and self.gold_reward:
            raise ConfigError("the world brings its own gold reward; --gold-reward is for "
                              "your own data", field="gold_reward")
        for name in self.method_names():
            get_method(name)
        from preflab.compare.methods import REGISTRY

        sections = set(WORLD_HYPER) | {s for m in REGISTRY.values() for s in m.sections}
        for section, values in self.hyperparameters.items():
            if section not in sections or not isinstance(values, dict):
                raise ConfigError(f"hyperparameters: unknown section {section!r}",
                                  field="hyperparameters", expected=", ".join(sorted(sections)))
            for key in LENGTH_KEYS:
                if key in values:
                    raise ConfigError(f"hyperparameters: {section}: {key} would score one method "
                                      "at other lengths than it sampled in training",
                                      field="hyperparameters",
                                      expected="--max-new-tokens, which sets every sampled "
                                               "length at once")

    def validate_splits(self) -> None:
        """The split and configuration flags: your data only; a configuration for a hub name."""
        from preflab.config import check_source_config, flag

        for source in ("pairs", "prompts"):
            for name in (f"{source}_split", f"{source}_config"):
                if getattr(self, name) and self.world:
                    raise ConfigError(f"--{flag(name)} is for your own --{source}; the world "
                                      "brings its own data", field=name)
            check_source_config(self, source, f"{source}_config")

    def data_options(self, source: str) -> list[str]:
        """The flags of compare's data job that reads ``source`` (pairs, prompts): its split
        and configuration, where given."""
        return [word for name in ("split", "config") if getattr(self, f"{source}_{name}")
                for word in (f"--data-{name}", getattr(self, f"{source}_{name}"))]

    def pareto(self) -> list[float]:
        """The harmlessness weights of the several-objectives sweep (empty: none)."""
        try:
            weights = sorted({float(w) for w in self.pareto_weights.split(",") if w.strip()})
        except ValueError:
            weights = []
        if self.pareto_weights and (not weights or not all(
                math.isfinite(w) and w >= 0 for w in weights)):
            raise ConfigError(f"--pareto-weights {self.pareto_weights[:60]!r}", field="pareto_weights",
                              expected="finite weights of 0 or more, comma-separated, e.g. 0,1,3")
        return weights

    def preset_settings(self) -> Preset:
        preset = PRESETS[self.preset]
        changes = {k: getattr(self, k) for k in ("seeds", "eval_prompts", "eval_samples",
                                                 "pair_prompts") if getattr(self, k)}
        if self.methods:
            changes["methods"] = tuple(self.method_names())
        return dataclasses.replace(preset, **changes)

    def method_names(self) -> list[str]:
        if not self.methods:
            return list(PRESETS[self.preset].methods)
        return [m.strip() for m in self.methods.split(",") if m.strip()]
