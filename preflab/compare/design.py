"""What ``preflab compare`` runs: the jobs that the settings (``preflab.compare.settings``) turn into.

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
    pareto        --pareto-weights: for each w, both roads learn gold + w x harmlessness from
                  the pairs labelled again under it, starting from SFT
    frontier      beta (DPO) or kl_coef (PPO) x {1/3, 1, 3} at the base learning rate, every
                  seed at each setting: the reward-KL frontier as a sweep with intervals
    hacking       both roads under the same pressure: the same 1/4 of the pairs, each road's
                  regulariser (beta, kl_coef) 50x smaller and twice the training steps; DPO
                  trains on those pairs, PPO on a reward model trained on them
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from preflab.compare.harness import Job
from preflab.compare.methods import DIRECT, RLHF, Inputs, Stage, Variant, get_method
from preflab.compare.settings import (
    COMMON,
    GRID,
    HACK_SHARE,
    HACK_STRENGTH,
    USER_HYPER,
    WORLD_HYPER,
    CompareConfig,
    Preset,
)


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
        merged = {**COMMON, **values, **preset.hyper.get(section, {})}
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
    from preflab.models import gguf_location

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
    convert: list[str] = []  # the job that writes a GGUF model as a model directory
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
            resume="--resume", output=str(sft_dir))
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
        for weight in cfg.pareto():  # several objectives: the pairs under gold + w x harm
            key = pareto_key(weight)
            out = data_dir / f"pairs-{key}.jsonl"
            add(f"relabel-{key}", ["world", "relabel", "--pairs", pairs, "--world", world,
                                   "--out", out, "--harmlessness-weight", weight,
                                   "--overwrite"], out, "relabel", after=["pairs"])
            pair_files[key], pair_jobs[key] = str(out), f"relabel-{key}"
        design.inputs = {"world": str(world)}
    else:
        max_length = cfg.max_length or 512
        sft = cfg.model
        if gguf_location(cfg.model) is not None:  # dequantized once, not in every run
            base = data_dir / "model"
            add("convert", ["-m", "preflab.compare.data", "convert", "--model",
                            Path(cfg.model).resolve(), "--out", base], base, "convert")
            sft, convert = str(base), ["convert"]
        pairs, judge_pairs = data_dir / "pairs.jsonl", data_dir / "pairs-judge.jsonl"
        add("split-pairs", ["-m", "preflab.compare.data", "split", "--data", cfg.pairs,
                            *cfg.data_options("pairs"), "--share", cfg.judge_share, "--keep",
                            pairs, "--held-out", judge_pairs], judge_pairs, "data")
        prompts, eval_prompts = data_dir / "prompts-train.jsonl", data_dir / "prompts-eval.jsonl"
        add("split-prompts", ["-m", "preflab.compare.data", "split", "--data", cfg.prompts,
                              *cfg.data_options("prompts"), "--share", cfg.eval_share, "--keep",
                              prompts, "--held-out", eval_prompts], eval_prompts, "data")
        judge = runs_dir / "judge-rm"
        add("judge-rm", ["rm", "--model", sft, "--data", judge_pairs, "--output-dir", judge,
                         "--max-length", max_length, *_flags(hyper["rm"])],
            judge / "summary.json", "rm", after=["split-pairs", *convert], overwrite="--overwrite",
            resume="--resume", output=str(judge))
        gold = cfg.gold_reward or str(judge)
        score_flags = ["--reward", f"judge_reward={judge}", "--pairs", judge_pairs,
                       "--max-length", max_length]
        if cfg.gold_reward:
            score_flags += ["--reward", f"gold_reward={cfg.gold_reward}"]
        data_after = ["split-pairs", "split-prompts", "judge-rm", *convert]
        design.inputs = {"model": cfg.model, "pairs": cfg.pairs, "prompts": cfg.prompts,
                         **{k: getattr(cfg, k) for k in ("pairs_split", "pairs_config",
                                                         "prompts_split", "prompts_config")
                            if getattr(cfg, k)}}
    pair_files["all"] = str(pairs)
    need_shares = set(preset.shares) | ({HACK_SHARE} if preset.hacking else set())
    for share in sorted(need_shares, key=lambda s: -Fraction(s)):
        out = data_dir / f"pairs-{share.replace('/', 'of')}.jsonl"
        key = f"pairs-{share.replace('/', 'of')}"
        add(key, ["-m", "preflab.compare.data", "subset", "--pairs", pairs, "--share", share,
                  "--out", out], out, "data", after=data_after[:1])
        pair_files[share], pair_jobs[share] = str(out), key

    max_new_tokens = (cfg.max_new_tokens or preset.max_new_tokens
                      or (48 if cfg.mode == "world" else 128))
    inputs = Inputs(sft=sft, pairs=pair_files, prompts=str(prompts),
                    eval_prompts=str(eval_prompts), gold=gold, max_length=max_length,
                    eval_num_prompts=min(64, preset.eval_prompts), max_new_tokens=max_new_tokens)
    design.inputs.update(sft=sft, pairs=pair_files, prompts=str(prompts),
                         eval_prompts=str(eval_prompts), max_length=max_length,
                         harmlessness_weight=cfg.harmlessness_weight, kl_blowup=cfg.kl_blowup,
                         eval_num_prompts=preset.eval_prompts, eval_samples=preset.eval_samples,
                         pair_prompts=preset.pair_prompts if cfg.mode == "world" else None,
                         launcher=cfg.launcher, hyperparameters=hyper,
                         pareto_weights=cfg.pareto() if cfg.mode == "world" else [])
    sft_after = ["sft"] if cfg.mode == "world" else convert

    def score_job(key: str, policy: str, after: list[str], extra: list[str] = ()) -> str:
        out = scores_dir / f"{key}.json"
        add(f"score-{key}", ["-m", "preflab.compare.score", "--policy", policy, "--reference",
                             sft, "--prompts", eval_prompts, "--out", out, "--num-prompts",
                             preset.eval_prompts, "--samples", preset.eval_samples,
                             "--max-new-tokens", max_new_tokens, *score_flags, *extra], out,
            "score", after=after)
        return f"score-{key}"

    design.sft_score = score_job("sft", sft, list(dict.fromkeys(sft_after + data_after[1:])))

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
                after=list(dict.fromkeys(deps)), overwrite="--overwrite",
                resume="--resume" if stage.resumable else "", output=str(run_dir))
            design.stage_info[stage.key] = {"command": stage.command, "trains": list(stage.trains),
                                            "hyper": stage.hyper}
        last = stages[-1]
        policy = last.key
        run = Run(method_name, method.road, experiment, dataclasses.asdict(variant),
                  [s.key for s in stages], policy)
        if not variant.probe:
            scored = last.score_policy or str(runs_dir / policy / "final")
            run.score = score_job(policy, scored, [policy], _resolve(last.score_args, runs_dir))
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
    for weight in cfg.pareto() if cfg.mode == "world" else []:
        for name in ("dpo", "ppo"):
            if name in preset.methods:
                add_run(name, "pareto", Variant(pairs=pareto_key(weight)))
    for name in preset.frontier_methods:
        if name not in preset.methods:
            continue
        for k in GRID:
            for seed in range(preset.seeds if name in preset.seed_methods else 1):
                if k == 1.0 or (seed == 0 and name in preset.sensitivity_methods):
                    continue  # the main and seed runs, and the sensitivity grid's run
                add_run(name, "frontier", Variant(seed=seed, strength_scale=round(k, 4)))
    if preset.hacking:
        for name in ("ppo", "dpo"):
            if name in preset.methods:
                for seed in range(preset.hacking_seeds):
                    add_run(name, "hacking", Variant(seed=seed, pairs=HACK_SHARE,
                                                     strength_scale=HACK_STRENGTH,
                                                     steps_scale=2.0, tag="hack"))
    return design


def pareto_key(weight: float) -> str:
    """``w1``, ``w0.5``: the name of the pairs labelled under gold + weight x harmlessness."""
    return f"w{weight:g}"


def _flags(values: dict) -> list[str]:
    from preflab.compare.methods import flags

    return flags(values)


__all__ = ["Design", "Run", "build"]
