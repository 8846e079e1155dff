"""``preflab demo``: the whole pipeline on the built-in world, offline, in minutes.

    world  -> OUT/world        a synthetic review task with a hidden gold reward
    sft    -> OUT/sft          supervised fine-tuning of the world's small random model
    pairs  -> OUT/pairs.jsonl  K samples per prompt from the SFT model, labelled by
                               simulated annotators (Bradley-Terry on the gold reward)
    dpo    -> OUT/dpo          DPO from the SFT model on those pairs
    score  -> OUT/scores.json  SFT and DPO policies sampled on held-out prompts and measured
                               against the gold reward, which no model ever saw
    report -> OUT/report.md

A stage whose result is already in OUT is reused, so an interrupted demo continues where it
stopped; ``--fresh`` starts again from nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from preflab.errors import ConfigError

STAGE_DIRS = ("world", "sft", "dpo", "pairs.jsonl", "pairs_unpaired.jsonl", "scores.json",
              "report.md")

# Settings for the world's default model: measured on 2 CPU cores (see README).
DEMO_DPO = {"learning_rate": 5e-4, "beta": 0.5, "batch_size": 32, "max_steps": 300,
            "warmup_ratio": 0.1, "eval_every": 100}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preflab demo", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="demo",
                        help="where every stage writes (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for every stage (default: 0)")
    parser.add_argument("--pair-prompts", type=int, default=768,
                        help="prompts sampled for preference pairs; 4 samples each give up "
                             "to 6 pairs per prompt (default: %(default)s)")
    parser.add_argument("--eval-prompts", type=int, default=200,
                        help="held-out prompts for scoring (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete what an earlier demo wrote in --output-dir and start again")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide progress bars")
    return parser


class Stages:
    """Prints each stage's banner and outcome, and times it."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, str]] = []
        self.start = time.perf_counter()

    def run(self, name: str, what: str, done: bool, fn) -> None:
        print(f"\n== {name}: {what}", flush=True)
        t0 = time.perf_counter()
        if done:
            outcome = "reused from an earlier run (pass --fresh to redo)"
        else:
            outcome = fn()
        seconds = time.perf_counter() - t0
        self.rows.append((name, seconds, outcome))
        print(f"   {outcome}  [{seconds:.0f}s]", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from preflab.algorithms import dpo, sft
    from preflab.config import config_from_dict
    from preflab.models import quiet_transformers
    from preflab.world import build_world, load_world
    from preflab.world.build import SFT_SETTINGS
    from preflab.world.cli import make_pairs, score_policy

    quiet_transformers()
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError("--output-dir exists and is a file", path=str(out))
    if args.fresh:
        for name in STAGE_DIRS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    world_dir, sft_dir, dpo_dir = out / "world", out / "sft", out / "dpo"
    pairs_file = out / "pairs.jsonl"
    common = {"seed": args.seed, "progress": args.progress, "log_every": 25}

    def do_world():
        build_world(world_dir, seed=args.seed, overwrite=world_dir.exists(), progress=args.progress)
        meta = load_world(world_dir).meta
        return (f"{meta['corpus']['reviews']} reviews, corpus gold reward "
                f"{meta['corpus']['gold_mean']:.3f}; model in {world_dir / 'model'}")

    stages.run("world", "build the built-in task", (world_dir / "world.json").exists(), do_world)
    world = load_world(world_dir)

    def do_sft():
        cfg = config_from_dict(sft.SFTConfig, {
            "model": str(world.model_dir), "data": str(world.path("sft")), "output_dir": str(sft_dir),
            "overwrite": True, "max_length": 64, **SFT_SETTINGS, **common})
        summary = sft.train(cfg)
        return f"eval loss {summary['final_metrics']['eval/loss']:.3f}; model in {sft_dir / 'final'}"

    stages.run("sft", "teach the random model to write reviews",
               (sft_dir / "final" / "config.json").exists(), do_sft)

    def do_pairs():
        stats = make_pairs(sft_dir / "final", world, pairs_file, samples_per_prompt=4,
                           max_prompts=args.pair_prompts, seed=args.seed, overwrite=True,
                           progress=args.progress)
        agree = "n/a" if stats["agreement"] is None else f"{100 * stats['agreement']:.1f}%"
        return (f"{stats['pairs']} pairs from {stats['prompts']} prompts; annotators agree with "
                f"the gold reward on {agree} of them; {pairs_file}")

    stages.run("pairs", "sample from the SFT model and label pairs like people would",
               pairs_file.exists(), do_pairs)

    def do_dpo():
        cfg = config_from_dict(dpo.DPOConfig, {
            "model": str(sft_dir / "final"), "data": str(pairs_file), "output_dir": str(dpo_dir),
            "overwrite": True, "max_length": 64, "eval_prompts": str(world.path("prompts_eval")),
            "gold_reward": f"{world.root / 'rewards.py'}:gold_reward", "eval_num_prompts": 64,
            **DEMO_DPO, **common})
        summary = dpo.train(cfg)
        m = summary["final_metrics"]
        return (f"held-out preference accuracy {m['eval/rewards/accuracies']:.2f}, "
                f"KL to SFT {m.get('eval/kl', float('nan')):.2f}; model in {dpo_dir / 'final'}")

    stages.run("dpo", "direct preference optimisation from the SFT model",
               (dpo_dir / "final" / "config.json").exists(), do_dpo)

    scores_file = out / "scores.json"

    def do_score():
        scores = {name: {k.removeprefix("eval/"): v for k, v in score_policy(
                      path / "final", world, max_prompts=args.eval_prompts,
                      samples_per_prompt=4, seed=args.seed + 1).metrics.items()}
                  for name, path in (("sft", sft_dir), ("dpo", dpo_dir))}
        scores_file.write_text(json.dumps(scores, indent=2) + "\n")
        gain = scores["dpo"]["gold_reward"] - scores["sft"]["gold_reward"]
        return (f"gold reward SFT {scores['sft']['gold_reward']:.3f} -> DPO "
                f"{scores['dpo']['gold_reward']:.3f} ({gain:+.3f}) on held-out prompts")

    stages.run("score", "measure both policies on held-out prompts with the hidden gold reward",
               scores_file.exists(), do_score)
    scores = json.loads(scores_file.read_text())
    report = write_report(out, world, scores, stages)
    total = time.perf_counter() - stages.start
    print(f"\ndone in {total:.0f}s. Report: {report}")
    return 0


def write_report(out: Path, world, scores: dict, stages: Stages) -> Path:
    keys = [("gold_reward", "gold reward (hidden, 0-1)"), ("harmlessness", "harmlessness"),
            ("grammatical", "grammatical"), ("mean_length", "mean length (tokens)"),
            ("eos_rate", "ended with EOS"), ("distinct_n/per_input", "distinct-n within a prompt"),
            ("distinct_n/across_input", "distinct-n across prompts")]
    lines = ["# preflab demo", "",
             f"World: {world.root} (corpus gold reward {world.corpus_gold_mean:.3f}).", "",
             "| metric | SFT | DPO |", "|---|---|---|"]
    for key, label in keys:
        if key in scores["sft"]:
            lines.append(f"| {label} | {scores['sft'][key]:.3f} | {scores['dpo'][key]:.3f} |")
    lines += ["", "| stage | seconds | outcome |", "|---|---|---|"]
    lines += [f"| {name} | {sec:.0f} | {outcome} |" for name, sec, outcome in stages.rows]
    lines += ["", "Files: `world/` (task, model, data), `sft/`, `dpo/` (run directories with "
              "config.yaml, metrics.jsonl, summary.json, final/), `pairs.jsonl`, `scores.json`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    print("\n" + "\n".join(lines[4 : 6 + len(keys)]))
    return path
