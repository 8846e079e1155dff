"""What ``preflab compare`` runs: the settings, the presets, and the jobs they turn into.

Every method starts from the same SFT checkpoint. On the built-in world, compare builds the
world (when the directory holds none), trains that SFT model with the world's settings and
samples preference pairs from it, labelled by the world's simulated annotators; the hidden
gold reward measures quality. On the user's data (``--model --pairs --prompts``) the SFT model
is the user's, a share of the pairs is held out to train a judge reward model that no compared
run sees, and a share of the prompts is held out for evaluation.

The experiments behind the rows of the article's table (``Preset`` says which run):

    main          each method once (seed 0)
    seed          more seeds, for the stability row
    probe         a few steps of a method kept only for its memory figures
    efficiency    DPO and the RLHF road on 1/16 ... 1/2 of the labelled pairs, the same epochs
    sensitivity   learning rate x {1/3, 1, 3} by beta or kl_coef x {1/3, 1, 3}
    flexibility   the objective changes (gold + w x harmlessness): RLHF retrains its reward
                  model and continues PPO from its policy; DPO retrains on relabelled pairs
    hacking       PPO on a reward model from 1/4 of the pairs, with a 50x smaller KL
                  coefficient and twice the iterations
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from preflab.compare.harness import Job
from preflab.compare.methods import DIRECT, RLHF, Inputs, Stage, Variant, get_method
from preflab.config import arg
from preflab.errors import ConfigError

SHARES = ("1/16", "1/8", "1/4", "1/2")
HACK_SHARE = "1/4"  # the reward model of the reward-hacking run: trained on few pairs
GRID = (1 / 3, 1.0, 3.0)

# Hyperparameters for the built-in world's model (1.1M parameters, trained from scratch):
# the DPO paper's lr of 1e-6 is for pretrained billions-parameter models and does not move it.
WORLD_HYPER: dict[str, dict] = {
    "sft": {},  # the world's own sft.yaml
    "dpo": {"learning_rate": 5e-4, "beta": 0.5, "batch_size": 32, "max_steps": 300,
            "warmup_ratio": 0.1, "eval_every": 50},
    "ipo": {"learning_rate": 5e-4, "beta": 0.5, "batch_size": 32, "max_steps": 300,
            "warmup_ratio": 0.1, "eval_every": 50},
    "simpo": {"learning_rate": 1e-4, "beta": 2.0, "gamma": 0.5, "batch_size": 32,
              "max_steps": 300, "warmup_ratio": 0.1, "eval_every": 50},
    "rm": {"learning_rate": 1e-3, "num_epochs": 2, "batch_size": 32, "warmup_ratio": 0.05,
           "eval_fraction": 0.05},
    "ppo": {"learning_rate": 3e-4, "kl_coef": 0.05, "rollout_batch_size": 64,
            "num_minibatches": 4, "batch_size": 16, "max_steps": 60, "eval_every": 10},
    "rm-lora": {"learning_rate": 1e-3, "num_epochs": 2, "batch_size": 32, "warmup_ratio": 0.05,
                "eval_fraction": 0.05, "lora_rank": 32},
    "ppo-shared": {"learning_rate": 2e-4, "kl_coef": 0.05, "rollout_batch_size": 64,
                   "num_minibatches": 4, "batch_size": 16, "max_steps": 60, "eval_every": 10,
                   "lora_rank": 32},
}
# On the user's data: each command's own defaults (the papers' values), evaluated now and then.
USER_HYPER: dict[str, dict] = {
    "sft": {},
    "dpo": {"eval_every": 100}, "ipo": {"eval_every": 100},
    "simpo": {"beta": 2.0, "gamma": 0.5, "eval_every": 100}, "rm": {},
    "ppo": {"eval_every": 20}, "rm-lora": {"lora_rank": 16},
    "ppo-shared": {"lora_rank": 16, "eval_every": 20},
}
COMMON = {"log_every": 10, "progress": False}


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
    pair_prompts: int = 1024
    eval_prompts: int = 128
    eval_samples: int = 4
    steps_scale: float = 1.0


ALL_METHODS = ("dpo", "ipo", "simpo", "dpo-precomputed", "ppo", "ppo-shared")
PRESETS = {
    "quick": Preset(methods=("dpo", "ipo", "ppo", "ppo-shared"),
                    probes=("dpo-precomputed", "simpo"), pair_prompts=768,
                    steps_scale=2 / 3),
    "standard": Preset(methods=ALL_METHODS, seeds=3, seed_methods=("dpo", "ppo"),
                       shares=SHARES, flexibility=True, hacking=True),
    "full": Preset(methods=ALL_METHODS, seeds=3, seed_methods=ALL_METHODS, shares=SHARES,
                   sensitivity_methods=("dpo", "ppo"), flexibility=True, hacking=True),
}


@dataclass
class CompareConfig:
    """``preflab compare``: both roads on the same SFT checkpoint, measured row by row."""

    output_dir: str = arg("", "Where everything goes: runs/, scores/, figures/, results.json, "
                          "report.md, report.html.")
    world: str = arg("", "Built-in world directory; built there when it holds none. Give this, "
                     "or --model, --pairs and --prompts for your own data.")
    model: str = arg("", "Your SFT checkpoint: every compared method starts from it.")
    pairs: str = arg("", "Your preference pairs (prompt, chosen, rejected).")
    prompts: str = arg("", "Your prompts (unlabelled: PPO trains on them; a share is held out "
                       "for evaluation).")
    gold_reward: str = arg("", "A reward you trust more than a judge model: module:function, "
                           "file.py:function or a reward-model directory (your data only).")
    preset: str = arg("standard", "How much to run: quick (one seed, the main methods, ~8 min "
                      "on 2 CPU cores for the world), standard (3 seeds of DPO and PPO, every "
                      "method, sample efficiency, flexibility, reward hacking), full (standard, "
                      "3 seeds of every method, and the hyperparameter sensitivity grid).",
                      choices=tuple(PRESETS))
    methods: str = arg("", "Comma-separated methods (default: the preset's). Known: "
                       + ", ".join(ALL_METHODS) + ".")
    seeds: int = arg(0, "Seeds for the stability row (0: the preset's).")
    jobs: int = arg(0, "Runs at a time; 0: one on a machine with a GPU (runs would share it), "
                    "else one per CPU core up to 4. Each run gets --threads CPU threads.")
    threads: int = arg(0, "CPU threads per run (OMP_NUM_THREADS); 0: the cores shared by the runs "
                       "that can run at once (a run that runs alone gets them all).")
    launcher: str = arg("", "Prefix for every training command, e.g. 'torchrun "
                        "--nproc-per-node 8' or 'accelerate launch'.")
    time_budget: float = arg(3600.0, "Seconds one run may take before it is stopped and recorded "
                             "as timed out.")
    fresh: bool = arg(False, "Run everything again instead of reusing finished runs.")
    dry_run: bool = arg(False, "Print every command (in dependency order) and run nothing.")
    gpu_memory: str = arg("", "Your GPU memory (e.g. 80GB): the recommendation checks which "
                          "methods fit for the compared model (preflab plan).")
    have: str = arg("pairs", "What you have most of: preference pairs, or prompts with few "
                    "labels (for the recommendation).", choices=("pairs", "prompts"))
    objective_may_change: bool = arg(False, "Your objective is likely to change after "
                                     "deployment (for the recommendation).")
    eval_prompts: int = arg(0, "Held-out prompts each policy is scored on (0: the preset's).")
    eval_samples: int = arg(0, "Samples per held-out prompt (0: the preset's).")
    pair_prompts: int = arg(0, "World: prompts sampled for preference pairs (0: the preset's).")
    judge_share: float = arg(0.2, "Your data: share of the pairs held out for the judge reward "
                             "model.")
    eval_share: float = arg(0.1, "Your data: share of the prompts held out for evaluation.")
    harmlessness_weight: float = arg(1.0, "World: weight w of the changed objective, gold + "
                                     "w x harmlessness (flexibility row).")
    kl_blowup: float = arg(10.0, "eval/kl above this many nats counts as a KL blow-up.")
    max_length: int = arg(0, "Longest sequence in tokens (0: 64 on the world, 512 otherwise).")
    max_new_tokens: int = arg(0, "Longest completion sampled when a policy is evaluated (0: 48 on "
                              "the world, 128 otherwise).")
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
        if self.world and self.gold_reward:
            raise ConfigError("the world brings its own gold reward; --gold-reward is for "
                              "your own data", field="gold_reward")
        for name in ("seeds", "jobs", "threads", "eval_prompts", "eval_samples", "pair_prompts",
                     "max_length", "max_new_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more", field=name)
        for name in ("judge_share", "eval_share"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in (0, 1)", field=name)
        if not self.time_budget > 0:
            raise ConfigError("--time-budget must be a positive number of seconds",
                              field="time_budget")
        for name in self.method_names():
            get_method(name)
        from preflab.compare.methods import REGISTRY

        sections = set(WORLD_HYPER) | {s for m in REGISTRY.values() for s in m.sections}
        for section, values in self.hyperparameters.items():
            if section not in sections or not isinstance(values, dict):
                raise ConfigError(f"hyperparameters: unknown section {section!r}",
                                  field="hyperparameters", expected=", ".join(sorted(sections)))

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


@dataclass
class Run:
    """One compared run of a method: its stages, its policy and where its score goes."""

    method: str
    road: str
    experiment: str
    variant: dict
    stages: list[str]
    policy: str
    score: str | None = None


@dataclass
class Design:
    mode: str
    preset: str
    quality: str
    """The metric that measures quality: gold_reward (world, or the user's), judge_reward."""
    root: Path
    jobs: dict[str, Job] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    sft_score: str = ""
    stage_info: dict[str, dict] = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"mode": self.mode, "preset": self.preset, "quality": self.quality,
                "runs": [dataclasses.asdict(r) for r in self.runs], "sft_score": self.sft_score,
                "stages": self.stage_info, "inputs": self.inputs,
                "jobs": {k: {"kind": j.kind, "after": j.after, "command": j.words}
                         for k, j in self.jobs.items()}}

    def save(self) -> None:
        (self.root / "design.json").write_text(json.dumps(self.as_dict(), indent=1) + "\n",
                                               encoding="utf-8")


def _hyper(cfg: CompareConfig, preset: Preset) -> dict[str, dict]:
    base = WORLD_HYPER if cfg.mode == "world" else USER_HYPER
    out = {}
    for section, values in base.items():
        merged = {**COMMON, **values}
        if preset.steps_scale != 1 and "max_steps" in merged:
            merged["max_steps"] = max(1, round(merged["max_steps"] * preset.steps_scale))
        merged.update(cfg.hyperparameters.get(section, {}))
        out[section] = merged
    return out


def _resolve(args: tuple[str, ...], runs: Path) -> list[str]:
    """``@key`` and ``@key/sub`` placeholders -> paths under ``CMP/runs``."""
    return [str(runs / a[1:]) if a.startswith("@") else a for a in args]


def _placeholders(args: tuple[str, ...]) -> list[str]:
    return sorted({a[1:].split("/")[0] for a in args if a.startswith("@")})


def build(cfg: CompareConfig) -> Design:
    """The jobs and runs of a comparison (nothing runs here)."""
    root = Path(cfg.output_dir).resolve()
    runs_dir, data_dir, scores_dir = root / "runs", root / "data", root / "scores"
    preset = cfg.preset_settings()
    hyper = _hyper(cfg, preset)
    quality = "gold_reward" if (cfg.world or cfg.gold_reward) else "judge_reward"
    design = Design(cfg.mode, cfg.preset, quality, root)
    jobs = design.jobs

    def add(key: str, words: list[str], done: Path, kind: str, after=(), **meta) -> None:
        jobs[key] = Job(key, [str(w) for w in words], done, list(after), kind, meta)

    score_flags: list[str] = []
    pair_files: dict[str, str] = {}
    pair_jobs: dict[str, str] = {}  # share -> the job that writes its pairs
    data_after: list[str] = []
    if cfg.mode == "world":
        world = Path(cfg.world).resolve()
        max_length = cfg.max_length or 64
        if not (world / "world.json").is_file():
            add("world", ["world", "build", "--out", world], world / "world.json", "world",
                overwrite="--overwrite", output=str(world))
        sft_dir = runs_dir / "sft"
        add("sft", ["sft", "--config", world / "sft.yaml", "--model", world / "model", "--data",
                    world / "sft.jsonl", "--output-dir", sft_dir, "--max-length", max_length,
                    *_flags({**hyper["sft"], "log_every": 100})], sft_dir / "summary.json", "sft",
            after=[k for k in ("world",) if k in jobs], overwrite="--overwrite",
            output=str(sft_dir))
        sft = str(sft_dir / "final")
        pairs = data_dir / "pairs.jsonl"
        add("pairs", ["world", "pairs", "--policy", sft, "--world", world, "--out", pairs,
                      "--max-prompts", preset.pair_prompts, "--samples-per-prompt", 4,
                      "--batch-size", 64, "--seed", 0, "--overwrite"], pairs, "pairs",
            after=["sft"])
        prompts, eval_prompts = world / "prompts_train.jsonl", world / "prompts_eval.jsonl"
        gold = f"{world / 'rewards.py'}:gold_reward"
        score_flags = ["--world", world]
        data_after = ["pairs"]
        if preset.flexibility:
            new = data_dir / "pairs-new.jsonl"
            add("relabel", ["world", "relabel", "--pairs", pairs, "--world", world, "--out", new,
                            "--harmlessness-weight", cfg.harmlessness_weight, "--overwrite"],
                new, "relabel", after=["pairs"])
            pair_files["new"], pair_jobs["new"] = str(new), "relabel"
        design.inputs = {"world": str(world)}
    else:
        max_length = cfg.max_length or 512
        sft = cfg.model
        pairs, judge_pairs = data_dir / "pairs.jsonl", data_dir / "pairs-judge.jsonl"
        add("split-pairs", ["-m", "preflab.compare.data", "split", "--data", cfg.pairs,
                            "--share", cfg.judge_share, "--keep", pairs, "--held-out",
                            judge_pairs], judge_pairs, "data")
        prompts, eval_prompts = data_dir / "prompts-train.jsonl", data_dir / "prompts-eval.jsonl"
        add("split-prompts", ["-m", "preflab.compare.data", "split", "--data", cfg.prompts,
                              "--share", cfg.eval_share, "--keep", prompts, "--held-out",
                              eval_prompts], eval_prompts, "data")
        judge = runs_dir / "judge-rm"
        add("judge-rm", ["rm", "--model", sft, "--data", judge_pairs, "--output-dir", judge,
                         "--max-length", max_length, *_flags(hyper["rm"])],
            judge / "summary.json", "rm", after=["split-pairs"], overwrite="--overwrite",
            output=str(judge))
        gold = cfg.gold_reward or str(judge)
        score_flags = ["--reward", f"judge_reward={judge}", "--pairs", judge_pairs,
                       "--max-length", max_length]
        if cfg.gold_reward:
            score_flags += ["--reward", f"gold_reward={cfg.gold_reward}"]
        data_after = ["split-pairs", "split-prompts", "judge-rm"]
        design.inputs = {"model": cfg.model, "pairs": cfg.pairs, "prompts": cfg.prompts}
    pair_files["all"] = str(pairs)
    need_shares = set(preset.shares) | ({HACK_SHARE} if preset.hacking else set())
    for share in sorted(need_shares, key=lambda s: -Fraction(s)):
        out = data_dir / f"pairs-{share.replace('/', 'of')}.jsonl"
        key = f"pairs-{share.replace('/', 'of')}"
        add(key, ["-m", "preflab.compare.data", "subset", "--pairs", pairs, "--share", share,
                  "--out", out], out, "data", after=data_after[:1])
        pair_files[share], pair_jobs[share] = str(out), key

    max_new_tokens = cfg.max_new_tokens or (48 if cfg.mode == "world" else 128)
    inputs = Inputs(sft=sft, pairs=pair_files, prompts=str(prompts),
                    eval_prompts=str(eval_prompts), gold=gold, max_length=max_length,
                    max_new_tokens=max_new_tokens)
    design.inputs.update(sft=sft, pairs=pair_files, prompts=str(prompts),
                         eval_prompts=str(eval_prompts), max_length=max_length,
                         harmlessness_weight=cfg.harmlessness_weight, kl_blowup=cfg.kl_blowup,
                         eval_num_prompts=preset.eval_prompts, eval_samples=preset.eval_samples,
                         pair_prompts=preset.pair_prompts if cfg.mode == "world" else None,
                         launcher=cfg.launcher, hyperparameters=hyper)
    sft_after = ["sft"] if cfg.mode == "world" else []

    def score_job(key: str, policy: str, after: list[str]) -> str:
        out = scores_dir / f"{key}.json"
        add(f"score-{key}", ["-m", "preflab.compare.score", "--policy", policy, "--reference",
                             sft, "--prompts", eval_prompts, "--out", out, "--num-prompts",
                             preset.eval_prompts, "--samples", preset.eval_samples,
                             "--max-new-tokens", max_new_tokens, *score_flags], out, "score",
            after=after)
        return f"score-{key}"

    design.sft_score = score_job("sft", sft, sft_after + data_after[1:])

    def add_run(method_name: str, experiment: str, variant: Variant) -> None:
        method = get_method(method_name)
        stages: list[Stage] = method.build(inputs, hyper, variant)
        for stage in stages:
            args = _resolve(stage.args, runs_dir)
            run_dir = runs_dir / stage.key
            words = [stage.command, *args, "--output-dir", str(run_dir)]
            if stage.key in jobs:
                if jobs[stage.key].words != words:
                    raise ValueError(f"two settings for one run {stage.key}")
                continue
            deps = sft_after + data_after + [pair_jobs[k] for k, f in pair_files.items()
                                             if f in args and k in pair_jobs]
            deps += _placeholders(stage.args)
            add(stage.key, words, run_dir / "summary.json", stage.command,
                after=list(dict.fromkeys(deps)), overwrite="--overwrite", output=str(run_dir))
            design.stage_info[stage.key] = {"command": stage.command, "trains": list(stage.trains),
                                            "hyper": stage.hyper}
        policy = stages[-1].key
        run = Run(method_name, method.road, experiment, dataclasses.asdict(variant),
                  [s.key for s in stages], policy)
        if not variant.probe:
            run.score = score_job(policy, str(runs_dir / policy / "final"), [policy])
        design.runs.append(run)

    for name in preset.methods:
        add_run(name, "main", Variant(seed=0))
    for name in preset.methods:
        if name in preset.seed_methods:
            for seed in range(1, preset.seeds):
                add_run(name, "seed", Variant(seed=seed))
    for name in preset.probes:
        if name not in preset.methods:
            add_run(name, "probe", Variant(seed=0, probe=True))
    for name in preset.share_methods:
        if name in preset.methods:
            for share in preset.shares:
                # The same epochs over fewer pairs: a direct method's steps shrink with the
                # share, as the reward model's do; PPO's iterations (on unlabelled prompts) not.
                scale = float(Fraction(share)) if get_method(name).road == DIRECT else 1.0
                add_run(name, "efficiency", Variant(pairs=share, steps_scale=scale))
    for name in preset.sensitivity_methods:
        if name in preset.methods:
            for lr in GRID:
                for k in GRID:
                    if (lr, k) != (1.0, 1.0):
                        add_run(name, "sensitivity",
                                Variant(lr_scale=round(lr, 4), strength_scale=round(k, 4)))
    if preset.flexibility and cfg.mode == "world":
        for name in ("dpo", "ppo"):
            if name not in preset.methods:
                continue
            if get_method(name).road == RLHF:
                add_run(name, "flexibility", Variant(pairs="new", continue_from=f"{name}-s0",
                                                     steps_scale=0.5))
            else:
                add_run(name, "flexibility", Variant(pairs="new"))
    if preset.hacking and "ppo" in preset.methods:
        add_run("ppo", "hacking", Variant(pairs=HACK_SHARE, strength_scale=0.02, steps_scale=2.0,
                                          tag="hack"))
    return design


def _flags(values: dict) -> list[str]:
    from preflab.compare.methods import flags

    return flags(values)


__all__ = ["CompareConfig", "Design", "PRESETS", "Preset", "Run", "build", "DIRECT", "RLHF"]
