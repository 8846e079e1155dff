"""SFT throughput and peak memory: `preflab sft` against TRL's SFTTrainer, in the same run.

Both train the same randomly initialised ~20M-parameter Llama (built here) on the same
prompt-completion records, loss on the completion only, batch of 8, AdamW, the same learning
rate and schedule, in fresh processes (peak RSS is each process's own), alternating, best of
the repeats. Throughput counts real (unpadded) prompt+completion tokens per second over the
steps after the warm-up:

- TRL: from its own ``num_tokens`` log (every step logged);
- preflab: the data's mean tokens per example x 8 per step (20 steps or more average the
  batches out; with ``--lengths equal`` it is exact).

Rows: TRL's default settings (padded batches); TRL with ``packing=True`` (its BFD packing into
rows of ``--max-length`` tokens, padding-free, 8 rows per step); preflab; preflab
``--padding-free`` (the 8 examples of a step packed into as few rows as fit).

``--gradient-checkpointing off|on`` (default off) sets it on BOTH sides (``defaults``: each
side's own): TRL's ``SFTConfig``
turns it on by default, preflab and transformers leave it off. (Until 2026-11-28 this script
left TRL at its default, on, against preflab's, off.)

``--lengths variable``: log-normal prompt (median 24, sigma 0.8, 4 to 128) and completion
(median 60, sigma 0.9, 2 to 300) lengths; ``equal``: every sequence 256 tokens. Both sides
get a max length of 512.

``--model PATH`` (a Hugging Face directory or a .gguf file, e.g. SmolLM2-135M-Instruct's)
trains that model instead of the random Llama. The text is then drawn from words that are one
token each of its tokenizer (checked on the first records), so lengths stay lengths in tokens;
with ``--lengths variable`` the tails reach 512 tokens for prompts and for completions (with
EOS) instead of 128 and 300, and the max length is 1024 (TRL's packed rows too), which holds
any record, so neither side truncates. TRL's packed rows then make 8,192 tokens a step: on
SmolLM2-135M without gradient checkpointing that row outgrew a 24 GiB machine (OOM-killed at
22.4 GiB, 2026-12); with checkpointing on both sides it peaked at 9.6 GiB but took about 5
minutes a step on one CPU thread. Leave it out (``--only``) unless that is affordable.

The output starts with the command line, then one line per run, then each preflab row's
throughput and peak RSS as ratios of each TRL row's.

TRL is needed only here:  pip install 'preflab[bench]'   (or: pip install trl)

    python benchmarks/sft_vs_trl.py [--steps 20] [--warmup 3] [--lengths variable|equal]
        [--model DIR_OR_GGUF] [--gradient-checkpointing off|on|defaults] [--only ROWS]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

from common import (
    LLAMA_20M,
    MODEL_MAX_LENGTH,
    MODEL_TAIL,
    add_checkpointing_flag,
    add_model_flag,
    check_token_counts,
    checkpoints,
    describe_model,
    long_tailed,
    model_and_words,
    preflab_seconds,
    print_command,
    require_trl,
    run_alternating,
    seconds_after_warmup,
    step_clock,
)

BATCH = 8
MAX_LENGTH = 512
EQUAL_PROMPT, EQUAL_COMPLETION = 32, 223  # --lengths equal: + EOS = 256 tokens


def build(work: Path, n: int, lengths: str,
          model: str | None = None) -> tuple[Path, Path, float]:
    """The model (the random 20M Llama, or ``model``'s directory), the records, and the mean
    real tokens per example (prompt, completion, EOS)."""
    model_dir, words = model_and_words(work, model, **LLAMA_20M, max_positions=MAX_LENGTH + 8)
    prompt_high, completion_high = ((MODEL_TAIL - words.prompt_specials, MODEL_TAIL - 1)
                                    if model else (128, 300))
    rng = random.Random(0)
    records, counts = [], []
    for _ in range(n):
        p, c = (EQUAL_PROMPT, EQUAL_COMPLETION) if lengths == "equal" else (
            long_tailed(rng, 24, 0.8, 4, prompt_high),
            long_tailed(rng, 60, 0.9, 2, completion_high))
        counts.append({"prompt": p + words.prompt_specials, "completion": c + 1})  # + EOS
        records.append({"prompt": words.prompt(rng, p), "completion": words.completion(rng, c)})
    check_token_counts(model_dir, records, counts)
    data = work / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return model_dir, data, sum(sum(x.values()) for x in counts) / n


def worker_preflab(model_dir, data, out, steps, warmup, per_example, checkpointing=False,
                   padding_free=False, max_length=MAX_LENGTH) -> dict:
    from preflab.algorithms import sft

    sft.main(["--model", model_dir, "--data", data, "--output-dir", out, "--max-steps", str(steps),
              "--batch-size", str(BATCH), "--eval-fraction", "0", "--max-length", str(max_length),
              "--learning-rate", "1e-4", "--log-every", "1", "--no-progress", "--overwrite",
              *(["--padding-free"] if padding_free else []),
              *(["--gradient-checkpointing"] if checkpointing else [])])
    seconds, _, _ = preflab_seconds(out, warmup)
    return {"tokens_per_sec": per_example * BATCH * (steps - warmup) / seconds,
            "peak_rss_bytes": json.loads(Path(out, "summary.json").read_text())["peak_rss_bytes"]}


def worker_trl(model_dir, data, out, steps, warmup, per_example, checkpointing,
               packing=False, max_length=MAX_LENGTH) -> dict:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    dataset = load_dataset("json", data_files=data, split="train")
    clock, stamps = step_clock()

    args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=BATCH,
                     learning_rate=1e-4, max_length=max_length, packing=packing,
                     logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                     dataloader_num_workers=0, seed=0, disable_tqdm=True, bf16=False, fp16=False,
                     gradient_checkpointing=checkpointing)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[clock])
    start = time.perf_counter()
    trainer.train()
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    seconds = seconds_after_warmup(stamps, warmup, start)
    return {"tokens_per_sec": (tokens[-1] - tokens[warmup - 1]) / seconds,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


WORKERS = {
    "trl": lambda *a, **kw: worker_trl(*a, **kw),
    "trl-packing": lambda *a, **kw: worker_trl(*a, packing=True, **kw),
    "preflab": lambda *a, **kw: worker_preflab(*a, **kw),
    "preflab-padding-free": lambda *a, **kw: worker_preflab(*a, padding_free=True, **kw),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lengths", choices=("equal", "variable"), default="variable")
    add_checkpointing_flag(parser, "SFTConfig")
    add_model_flag(parser, None)
    parser.add_argument("--only", default=",".join(WORKERS),
                        help="comma-separated rows to run (preflab's ratios need trl or "
                             "trl-packing among them)")
    parser.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--per-example", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        side = "trl" if args.worker.startswith("trl") else "preflab"
        result = WORKERS[args.worker](*args.paths, args.steps, args.warmup, args.per_example,
                                      checkpoints(args.gradient_checkpointing, side),
                                      max_length=args.max_length)
        print("RESULT " + json.dumps(result))
        return
    names = [n for n in args.only.split(",") if n]
    if unknown := set(names) - set(WORKERS):
        parser.error(f"--only: unknown rows {sorted(unknown)}; the rows are {', '.join(WORKERS)}")
    print_command()
    trl = require_trl()
    import torch
    import transformers

    max_length = MODEL_MAX_LENGTH if args.model and args.lengths == "variable" else MAX_LENGTH
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # enough records for TRL's packed rows too (about max_length / mean tokens per row)
        model_dir, data, per_example = build(work, BATCH * args.steps * 8 * max_length // 512,
                                             args.lengths, args.model)
        print(f"model: {describe_model(args.model, model_dir)}; {args.lengths} lengths, "
              f"{per_example:.0f} real tokens per example on average; batch {BATCH}; max length "
              f"{max_length}; {args.steps} steps ({args.warmup} warm-up, not timed); gradient "
              f"checkpointing: {args.gradient_checkpointing}")
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
              f"trl {trl.__version__}, {torch.get_num_threads()} threads")
        results = run_alternating(
            __file__, names, args.repeats,
            lambda name: ["--steps", str(args.steps), "--warmup", str(args.warmup), "--paths",
                          str(model_dir), str(data), str(work / f"run-{name}"),
                          "--per-example", str(per_example), "--max-length", str(max_length),
                          "--gradient-checkpointing", args.gradient_checkpointing],
            lambda name, r: (f"{name:22s} {r['tokens_per_sec']:8.0f} tokens/s   peak RSS "
                             f"{r['peak_rss_bytes'] / 2**20:6.0f} MiB"))
        for name in [n for n in ("preflab", "preflab-padding-free") if n in results]:
            for peer in [n for n in ("trl", "trl-packing") if n in results]:
                speed = results[name]["tokens_per_sec"] / results[peer]["tokens_per_sec"]
                rss = results[name]["peak_rss_bytes"] / results[peer]["peak_rss_bytes"]
                print(f"{name} / {peer}: throughput x{speed:.2f}, peak RSS x{rss:.2f}")


if __name__ == "__main__":
    main()
