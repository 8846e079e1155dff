"""The RLHF road on the built-in world, end to end, with the figures the acceptance asks for.

    python benchmarks/rlhf_world.py --work runs/rlhf_world [--threads 1] [--only rm,ppo_rm]

Stages (each a fresh process; a stage whose output exists is skipped, so the script resumes):

    world     preflab world build
    sft       preflab sft with the world's recommended settings
    pairs     K samples per prompt from the SFT policy, all pairs labelled by the annotator
    rm        preflab rm (full fine-tuning) on the pairs; held-out accuracy against the labels
              and against gold, beside the annotator's own agreement with gold
    ppo_rm    preflab ppo with that reward model (classic mode), gold reward logged for eval
    ppo_gold  preflab ppo with the world's gold reward as the training reward ("PPO on the
              true reward")
    rm_lora, ppo_shared   the same with a LoRA reward model, --memory-mode shared
    hack_rm, hack_ppo     reward hacking: a reward model from few pairs, a small KL coefficient,
              a longer run; the proxy score rises while the gold reward peaks and falls

Prints one table (gold reward of SFT vs each PPO run, reward-model accuracies, tensor bytes per
role, CPU seconds per stage) and writes it to WORK/results.json. CPU time is user + system time
of the stage's process. ``--threads`` sets OMP_NUM_THREADS for every stage (1 is fastest on a
shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REWARDS = ROOT / "benchmarks" / "world_rewards.py"
# PPO settings used for every world run (the world's reviews are ~10 tokens; 48 is the cap).
PPO = ["--rollout-batch-size", "64", "--num-minibatches", "4", "--batch-size", "16",
       "--learning-rate", "1e-4", "--kl-coef", "0.05", "--eval-every", "10",
       "--eval-num-prompts", "256", "--no-progress"]


def preflab(command: str) -> list[str]:
    from preflab.cli import COMMANDS

    if command in COMMANDS:
        return [sys.executable, "-m", "preflab.cli", command]
    # not yet in the CLI registry: call the algorithm module's main()
    return [sys.executable, "-c", f"import sys; from preflab.algorithms import {command} as m; "
            "sys.exit(m.main(sys.argv[1:]))"]


class Stages:
    def __init__(self, work: Path, threads: int, only: set[str] | None) -> None:
        self.work, self.only = work, only
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PREFLAB_WORLD": str(work / "world"),
                    "TOKENIZERS_PARALLELISM": "false"}
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    def run(self, name: str, done: Path, cmd: list[str]) -> None:
        if done.exists() or (self.only is not None and name not in self.only):
            return
        print(f"[{name}] {' '.join(cmd[-12:])}", flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=self.env, cwd=ROOT)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.wall[name] = round(time.perf_counter() - start, 1)
        self.cpu[name] = round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1)


def drop_empty(path: Path) -> None:
    """Pairs whose chosen or rejected completion is empty (the policy stopped at once) are not
    valid preference records; drop them."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    kept = [r for r in rows if r["chosen"].strip() and r["rejected"].strip()]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def rm_accuracy(rm_dir: Path, pairs: Path, eval_fraction: float, seed: int = 0) -> dict:
    """Held-out accuracy vs the labels and vs gold (the same split ``preflab rm`` holds out)."""
    from preflab.data.tokenize import split_train_eval
    from preflab.rewards import RewardModel

    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    _, held = split_train_eval(rows, eval_fraction, seed)
    model = RewardModel.from_pretrained(str(rm_dir / "final"), batch_size=256)
    prompts = [r["prompt"] for r in held]
    chosen = model(prompts, [r["chosen"] for r in held])
    rejected = model(prompts, [r["rejected"] for r in held])
    decided = [(c, j, r) for c, j, r in zip(chosen, rejected, held)
               if r["chosen_gold"] != r["rejected_gold"]]
    return {
        "heldout_pairs": len(held),
        "accuracy_vs_labels": sum(c > j for c, j in zip(chosen, rejected)) / len(held),
        "accuracy_vs_gold": sum((c > j) == (r["chosen_gold"] > r["rejected_gold"])
                                for c, j, r in decided) / len(decided),
        "annotator_agreement_with_gold": sum(r["chosen_gold"] > r["rejected_gold"]
                                             for _, _, r in decided) / len(decided),
    }


def ppo_figures(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/gold_reward" in r]
    train = [r for r in rows if "objective/scores" in r]
    summary = json.loads((run / "summary.json").read_text())
    best = max(evals, key=lambda r: r["eval/gold_reward"])
    return {
        "sft_gold": evals[0]["eval/gold_reward"],
        "final_gold": evals[-1]["eval/gold_reward"],
        "gain": evals[-1]["eval/gold_reward"] - evals[0]["eval/gold_reward"],
        "peak_gold": best["eval/gold_reward"], "peak_step": best["step"],
        "final_kl": evals[-1]["eval/kl"],
        "proxy_first": evals[0]["eval/proxy_reward"], "proxy_final": evals[-1]["eval/proxy_reward"],
        "curve": [(r["step"], round(r["eval/proxy_reward"], 3), round(r["eval/gold_reward"], 3),
                   round(r["eval/kl"], 2)) for r in evals],
        "train_scores": [(r["step"], round(r["objective/scores"], 3)) for r in train[::10]],
        "wall_s": summary["wall_s"], "time_s": summary["time_s"],
        "tensor_bytes": {k: v["total"] for k, v in summary["tensor_bytes"].items()},
    }


def print_tables(results: dict) -> None:
    print("\n| reward model | held-out pairs | accuracy vs labels | accuracy vs gold | "
          "annotator's agreement with gold |\n|---|---|---|---|---|")
    for name in ("rm", "rm_lora", "rm_few"):
        if name in results:
            r = results[name]
            print(f"| {name} | {r['heldout_pairs']} | {r['accuracy_vs_labels']:.3f} | "
                  f"{r['accuracy_vs_gold']:.3f} | {r['annotator_agreement_with_gold']:.3f} |")
    print("\n| PPO run | SFT gold | final gold | gain | peak gold (step) | final eval KL | "
          "wall s | tensor bytes (policy/value/reward/reference) |\n|---|---|---|---|---|---|---|---|")
    for name in ("ppo_rm", "ppo_gold", "ppo_shared", "ppo_hack"):
        if name in results:
            r = results[name]
            tb = "/".join(f"{r['tensor_bytes'][k] / 2**20:.2f}" for k in
                          ("policy", "value", "reward", "reference"))
            print(f"| {name} | {r['sft_gold']:.3f} | {r['final_gold']:.3f} | {r['gain']:+.3f} | "
                  f"{r['peak_gold']:.3f} ({r['peak_step']}) | {r['final_kl']:.2f} | "
                  f"{r['wall_s']:.0f} | {tb} MiB |")
    if "ppo_hack" in results:
        print("\nreward hacking (step, eval/proxy_reward, eval/gold_reward, eval/kl):")
        print("  " + " ".join(f"{c}" for c in results["ppo_hack"]["curve"]))
    if results.get("cpu_s"):
        print("\nCPU seconds per stage:", results["cpu_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/rlhf_world", help="directory for every run")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each stage")
    parser.add_argument("--only", default="", help="comma-separated stages to run (default all)")
    parser.add_argument("--pair-prompts", type=int, default=2000, help="prompts for the pairs")
    parser.add_argument("--samples", type=int, default=6, help="samples per prompt for the pairs")
    parser.add_argument("--ppo-steps", type=int, default=100, help="PPO iterations")
    parser.add_argument("--hack-pairs-prompts", type=int, default=300,
                        help="prompts (x4 samples) for the few-pairs reward model")
    parser.add_argument("--hack-steps", type=int, default=150, help="iterations of the hacking run")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    s = Stages(work, args.threads, set(args.only.split(",")) if args.only else None)
    world, sft = work / "world", work / "sft"
    data = ["--data", str(world / "prompts_train.jsonl"), "--eval-prompts",
            str(world / "prompts_eval.jsonl")]
    gold = ["--gold-reward", f"{REWARDS}:gold"]

    s.run("world", world / "world.json", preflab("world") + ["build", "--out", str(world)])
    from preflab.world.build import SFT_SETTINGS

    settings = [x for k, v in SFT_SETTINGS.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    s.run("sft", sft / "summary.json", preflab("sft") + [
        "--model", str(world / "model"), "--data", str(world / "sft.jsonl"), "--output-dir",
        str(sft), "--max-length", "128", "--no-progress", "--log-every", "100", *settings])
    pairs = work / "pairs.jsonl"
    if not pairs.exists():
        s.run("pairs", pairs, preflab("world") + [
            "pairs", "--policy", str(sft / "final"), "--world", str(world), "--out", str(pairs),
            "--samples-per-prompt", str(args.samples), "--max-prompts", str(args.pair_prompts),
            "--batch-size", "64", "--seed", "1"])
        drop_empty(pairs)
    rm_flags = ["--model", str(sft / "final"), "--data", str(pairs), "--batch-size", "32",
                "--warmup-ratio", "0.05", "--eval-fraction", "0.05", "--eval-every", "150",
                "--log-every", "150", "--no-progress", "--max-length", "128"]
    s.run("rm", work / "rm/summary.json", preflab("rm") + [
        *rm_flags, "--output-dir", str(work / "rm"), "--learning-rate", "2e-3"])
    s.run("ppo_rm", work / "ppo_rm/summary.json", preflab("ppo") + [
        "--model", str(sft / "final"), *data, "--output-dir", str(work / "ppo_rm"),
        "--reward", str(work / "rm"), *gold, "--max-steps", str(args.ppo_steps), *PPO])
    s.run("ppo_gold", work / "ppo_gold/summary.json", preflab("ppo") + [
        "--model", str(sft / "final"), *data, "--output-dir", str(work / "ppo_gold"),
        "--reward", f"{REWARDS}:gold", *gold, "--max-steps", str(args.ppo_steps), *PPO])
    lora = ["--lora-rank", "8", "--lora-target-modules", "q_proj,k_proj,v_proj,o_proj"]
    s.run("rm_lora", work / "rm_lora/summary.json", preflab("rm") + [
        *rm_flags, "--output-dir", str(work / "rm_lora"), "--learning-rate", "5e-4", *lora])
    s.run("ppo_shared", work / "ppo_shared/summary.json", preflab("ppo") + [
        "--model", str(sft / "final"), *data, "--output-dir", str(work / "ppo_shared"),
        "--reward", str(work / "rm_lora"), *gold, "--max-steps", str(args.ppo_steps), *PPO,
        "--memory-mode", "shared", *lora, "--learning-rate", "1e-3"])
    hack_pairs = work / "pairs_few.jsonl"
    if not hack_pairs.exists():
        s.run("hack_pairs", hack_pairs, preflab("world") + [
            "pairs", "--policy", str(sft / "final"), "--world", str(world), "--out",
            str(hack_pairs), "--samples-per-prompt", "4", "--max-prompts",
            str(args.hack_pairs_prompts), "--seed", "3"])
        drop_empty(hack_pairs)
    s.run("hack_rm", work / "rm_few/summary.json", preflab("rm") + [
        *[x if x != str(pairs) else str(hack_pairs) for x in rm_flags],
        "--output-dir", str(work / "rm_few"), "--learning-rate", "2e-3", "--num-epochs", "2"])
    s.run("hack_ppo", work / "ppo_hack/summary.json", preflab("ppo") + [
        "--model", str(sft / "final"), *data, "--output-dir", str(work / "ppo_hack"),
        "--reward", str(work / "rm_few"), *gold, "--max-steps", str(args.hack_steps), *PPO,
        "--kl-coef", "0.001", "--eval-every", "5"])

    results: dict = {"cpu_s": s.cpu, "wall_s": s.wall}
    for name in ("rm", "rm_lora", "rm_few"):  # all on the held-out part of the big pairs set
        if (work / name / "final").exists():
            results[name] = rm_accuracy(work / name, pairs, 0.05)
    for name in ("ppo_rm", "ppo_gold", "ppo_shared", "ppo_hack"):
        if (work / name / "summary.json").exists():
            results[name] = ppo_figures(work / name)
    old = json.loads((work / "results.json").read_text()) if (work / "results.json").exists() else {}
    for key in ("cpu_s", "wall_s"):
        results[key] = {**old.get(key, {}), **results[key]}
    (work / "results.json").write_text(json.dumps({**old, **results}, indent=2) + "\n")
    print_tables({**old, **results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
