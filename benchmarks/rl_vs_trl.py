"""RL throughput and peak memory: `preflab ppo`, `rloo` and `grpo` against TRL's RLOOTrainer and
GRPOTrainer, in the same run.

Every side trains the same randomly initialised Llama policy (built here) against the same
reward model (a sequence classifier of the same shape, built here), with a frozen reference
copy and the same KL coefficient, AdamW and learning rate. Each step samples the same number
of completions of the same length from the same prompts and takes one optimizer step on them:

- ``--prompts P`` prompts x ``--generations K`` completions per step for RLOO and GRPO (both
  sides). PPO samples one completion per prompt, so it takes P x K prompts per step from a
  prompt file that holds each prompt K times: the same completions per step, the same prompts.
  PPO also trains its value model (a fourth model) and runs its value pass.
- Completions are exactly ``--length`` tokens: the random policy almost never samples EOS,
  and the count is checked from each side's logs (TRL: ``completions/mean_length``).
- One pass over each batch (PPO: ``--ppo-epochs 1``, one minibatch; TRL and preflab RLOO and
  GRPO: ``num_iterations 1``, one optimizer step per generation).

``--gradient-checkpointing off|on`` (default off) sets it on BOTH sides (``defaults``: each
side's own): TRL's ``RLOOConfig`` and ``GRPOConfig`` turn it on by default, preflab leaves it
off. (Until 2026-11-29 this script left each side at its default.)

Samples per second count completions over the steps after ``--warmup``; each side runs in a
fresh process (peak RSS is its own), alternating, best of ``--repeats``.

``--model PATH`` (a Hugging Face directory or a .gguf file, e.g. SmolLM2-135M-Instruct's):
the policy and the reference are that model, and the reward model (and so PPO's value model,
which starts from it) is that model's body under a fresh scalar head, loaded from the same
directory and saved once here, so every side scores with the same one (``--size`` with it is
an error). Prompts are drawn from words that are one token each of its tokenizer. A trained
model does sample EOS, so completions may stop before ``--length``: the mean length column
shows how long they were (both sides sample from the same policy, so the lengths agree in
expectation, not per run).

The output starts with the command line, then one line per run, then each side's samples/s
and peak RSS as ratios of TRL RLOO's.

TRL is needed only here:  pip install 'preflab[bench]'   (or: pip install trl)

    python benchmarks/rl_vs_trl.py [--steps 8] [--warmup 2] [--size small|20m]
        [--model DIR_OR_GGUF] [--prompts 8] [--generations 4] [--length 64]
        [--gradient-checkpointing off|on|defaults]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from common import (
    LLAMA_SIZES,
    add_checkpointing_flag,
    add_model_flag,
    check_token_counts,
    checkpoints,
    describe_model,
    model_and_words,
    preflab_seconds,
    print_command,
    require_trl,
    run_alternating,
    seconds_after_warmup,
    settle_model_flags,
    step_clock,
)

PROMPT_WORDS = 32
KL = 0.05
LR = 1e-6


def save_reward(model_dir: str, out: str, pretrained: bool) -> None:
    """A sequence classifier with one label, saved to ``out`` with ``model_dir``'s tokenizer:
    ``model_dir``'s body under a fresh scalar head (``pretrained``), or a random one of its
    shape. Run in a child process (``build``): the weights would raise this process's RSS."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.disable_progress_bar()
    torch.manual_seed(1)
    config = AutoConfig.from_pretrained(model_dir, num_labels=1)
    config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
    if pretrained:
        logging.set_verbosity_error()  # the new head and the dropped LM head are expected
        reward = AutoModelForSequenceClassification.from_pretrained(model_dir, config=config)
    else:
        reward = AutoModelForSequenceClassification.from_config(config)
    reward.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.jinja"):
        if (Path(model_dir) / name).exists():
            (Path(out) / name).write_bytes((Path(model_dir) / name).read_bytes())


def build(work: Path, size: str | None, n_prompts: int, generations: int,
          model: str | None = None) -> tuple[Path, Path, Path, Path]:
    """Policy (the random Llama of ``size``, or ``model``'s directory), reward model, the
    prompts, and the prompts repeated K times (for PPO)."""
    model_dir, words = model_and_words(work, model, **({} if model else LLAMA_SIZES[size]))
    child = multiprocessing.get_context("spawn").Process(
        target=save_reward, args=(str(model_dir), str(work / "reward"), bool(model)))
    child.start()
    child.join()
    if child.exitcode != 0:
        sys.exit(f"building the reward model from {model_dir} failed")
    rng = random.Random(0)
    prompts = [words.prompt(rng, PROMPT_WORDS) for _ in range(n_prompts)]
    check_token_counts(model_dir, [{"prompt": p} for p in prompts],
                       [{"prompt": PROMPT_WORDS + words.prompt_specials}] * n_prompts)
    once, repeated = work / "prompts.jsonl", work / "prompts-x.jsonl"
    once.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    repeated.write_text("".join(json.dumps({"prompt": p}) + "\n"
                                for p in prompts for _ in range(generations)))
    return model_dir, work / "reward", once, repeated


def worker_preflab(command: str, model: str, reward: str, prompts: str, repeated: str, out: str,
                   steps: int, warmup: int, n_prompts: int, k: int, length: int,
                   checkpointing: bool) -> dict:
    from preflab.cli import main

    common = ["--model", model, "--reward", reward, "--output-dir", out, "--max-steps",
              str(steps), "--learning-rate", str(LR), "--kl-coef", str(KL), "--response-length",
              str(length), "--log-every", "1", "--no-progress", "--overwrite",
              "--missing-eos-penalty", "0", "--warmup-ratio", "0", "--max-length", "512",
              *(["--gradient-checkpointing"] if checkpointing else [])]
    if command == "ppo":
        args = ["ppo", "--data", repeated, *common, "--rollout-batch-size", str(n_prompts * k),
                "--num-minibatches", "1", "--batch-size", str(n_prompts * k), "--ppo-epochs", "1"]
    else:
        args = [command, "--data", prompts, *common, "--rollout-batch-size", str(n_prompts),
                "--num-generations", str(k), "--num-iterations", "1", "--num-minibatches", "1",
                "--batch-size", str(n_prompts * k)]
    if main(args) != 0:
        raise SystemExit(f"preflab {command} failed")
    seconds, last, rows = preflab_seconds(out, warmup)
    lengths = [r[name] for r in rows for name in ("completions/mean_length",
                                                  "objective/response_length") if name in r]
    summary = json.loads(Path(out, "summary.json").read_text())
    return {"samples_per_sec": n_prompts * k * (last - warmup) / seconds,
            "mean_length": sum(lengths) / len(lengths) if lengths else float("nan"),
            "peak_rss_bytes": summary["peak_rss_bytes"],
            "time_s": summary.get("time_s", {}), "iterations": last}


def _phases(r: dict) -> str:
    """preflab's seconds per iteration in each phase (its summary's ``time_s``, warm-up
    included), or nothing for TRL."""
    if not r.get("time_s"):
        return ""
    n = max(1, r["iterations"])
    return "   per iteration: " + ", ".join(f"{k} {v / n:.1f}s" for k, v in r["time_s"].items())


def worker_trl(command: str, model: str, reward: str, prompts: str, repeated: str, out: str,
               steps: int, warmup: int, n_prompts: int, k: int, length: int,
               checkpointing: bool) -> dict:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if command == "trl-rloo":
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    else:
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer

    tokenizer = AutoTokenizer.from_pretrained(model)
    policy = AutoModelForCausalLM.from_pretrained(model)
    dataset = load_dataset("json", data_files=prompts, split="train")
    clock, stamps = step_clock()

    args = Config(output_dir=out, max_steps=steps, per_device_train_batch_size=n_prompts * k,
                  num_generations=k, max_completion_length=length, num_iterations=1,
                  learning_rate=LR, beta=KL, logging_steps=1, save_strategy="no", report_to=[],
                  use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True,
                  bf16=False, fp16=False, temperature=1.0, lr_scheduler_type="cosine",
                  warmup_steps=0, gradient_checkpointing=checkpointing)
    trainer = Trainer(model=policy, reward_funcs=reward, args=args, train_dataset=dataset,
                      processing_class=tokenizer, callbacks=[clock])
    start = time.perf_counter()
    trainer.train()
    seconds = seconds_after_warmup(stamps, warmup, start)
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history
               if "completions/mean_length" in h]
    rate = n_prompts * k * (steps - warmup) / seconds
    return {"samples_per_sec": rate,
            "mean_length": sum(lengths) / len(lengths) if lengths else float("nan"),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


NAMES = ("preflab-ppo", "preflab-rloo", "preflab-grpo", "trl-rloo", "trl-grpo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", choices=tuple(LLAMA_SIZES),
                        help="the random Llama (default: small)")
    add_model_flag(parser)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt")
    parser.add_argument("--length", type=int, default=64, help="completion tokens")
    parser.add_argument("--repeats", type=int, default=2)
    add_checkpointing_flag(parser, "RLOOConfig and GRPOConfig")
    parser.add_argument("--only", default=",".join(NAMES), help="comma-separated sides to run")
    parser.add_argument("--worker", choices=NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.steps, args.warmup, args.prompts, args.generations, args.length)
    if args.worker:
        side, _, command = args.worker.partition("-")
        fn = worker_preflab if side == "preflab" else worker_trl
        result = fn(command if side == "preflab" else args.worker, *args.paths, *shape,
                    checkpointing=checkpoints(args.gradient_checkpointing, side))
        print("RESULT " + json.dumps(result))
        return
    settle_model_flags(parser, args, size="small")
    print_command()
    trl = require_trl()

    import torch
    import transformers

    names = [n for n in args.only.split(",") if n]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = build(work, args.size, args.prompts * args.steps, args.generations, args.model)
        up_to = "up to " if args.model else ""
        print(f"policy: {describe_model(args.model, paths[0])}; reward model and reference of "
              f"the same size; {args.prompts} prompts x {args.generations} completions of "
              f"{up_to}{args.length} tokens per step ({PROMPT_WORDS}-word prompts), one "
              f"optimizer step each; {args.steps} steps ({args.warmup} warm-up, not timed); "
              f"gradient checkpointing: {args.gradient_checkpointing}")
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
              f"trl {trl.__version__}, {torch.get_num_threads()} threads")
        results = run_alternating(
            __file__, names, args.repeats,
            lambda name: ["--steps", str(args.steps), "--warmup", str(args.warmup), "--prompts",
                          str(args.prompts), "--generations", str(args.generations), "--length",
                          str(args.length), "--gradient-checkpointing",
                          args.gradient_checkpointing, "--paths", *map(str, paths[:2]),
                          str(paths[2]), str(paths[3]), str(work / f"run-{name}")],
            lambda name, r: (f"{name:13s} {r['samples_per_sec']:7.2f} samples/s   peak RSS "
                             f"{r['peak_rss_bytes'] / 2**20:6.0f} MiB   mean length "
                             f"{r['mean_length']:.1f}{_phases(r)}"), key="samples_per_sec")
        base = results.get("trl-rloo")
        if base:
            for name in names:
                if name != "trl-rloo":
                    speed = results[name]["samples_per_sec"] / base["samples_per_sec"]
                    rss = results[name]["peak_rss_bytes"] / base["peak_rss_bytes"]
                    print(f"{name} / TRL RLOO: samples/s x{speed:.2f}, peak RSS x{rss:.2f}")


if __name__ == "__main__":
    sys.exit(main())
