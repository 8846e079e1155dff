"""DPO throughput and peak memory: `preflab dpo` against TRL's DPOTrainer, in the same run.

Both train the same randomly initialised Llama (built here) on the same preference pairs,
with the same batch, loss (``--loss sigmoid`` or ``ipo``), beta, AdamW and learning rate, and
a frozen reference copy. Each runs in a fresh process so its peak RSS is its own; throughput
counts the real (unpadded) prompt+completion tokens of chosen and rejected over steady-state
steps (warm-up steps are not timed for either).

``--gradient-checkpointing off|on`` (default off) sets it on BOTH sides (``defaults``: each
side's own), so they keep the same
activations: TRL's ``DPOConfig`` turns it on by default, preflab and transformers leave it
off. (Until 2026-11-28 this script left TRL at its default, on, against preflab's, off.)

``--lengths equal``: every sequence the same length, so padding cannot favour either.
``--lengths variable``: prompt and completion lengths long-tailed, as real preference data
is: log-normal, prompt median 24 words (sigma 0.8, 4 to 128), completion median 40 words
(sigma 0.9, 2 to 160); tokens per second then count the real tokens, the expected number
per step from the data (20 steps or more average the batches out). There preflab also runs
with ``--padding-free`` (a third row).

``--model PATH`` (a Hugging Face directory or a .gguf file, e.g. SmolLM2-135M-Instruct's)
trains that model instead of a random Llama (``--size`` with it is an error). The text is
then drawn from words that are one token each of its tokenizer (checked on the first records),
so the lengths above stay lengths in tokens; with ``--lengths variable`` the tails reach 512
tokens for prompts and for completions (with EOS) instead of 128 and 160, and both sides get
a max length of 1024 instead of 512, which holds any pair side, so neither truncates. Memory
grows with the longest sequence of a batch (16 of them, each position with its 49,152
logits): on SmolLM2-135M, 2 steps of variable lengths peaked at 16.0 GiB for TRL and 12.4 GiB
for preflab, padded (2026-12, one thread).

The output starts with the command line, then one line per run, then each preflab row's
throughput and peak RSS as ratios of TRL's.

TRL is needed only here:  pip install 'preflab[bench]'   (or: pip install trl)

    python benchmarks/dpo_throughput.py [--steps 10] [--warmup 2] [--size small|20m|60m]
        [--model DIR_OR_GGUF] [--lengths equal|variable] [--loss sigmoid|ipo]
        [--gradient-checkpointing off|on|defaults]
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
    LLAMA_SIZES,
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
    settle_model_flags,
    step_clock,
)

SIZES = {**LLAMA_SIZES, "60m": {"hidden_size": 640, "num_layers": 10, "num_heads": 10,
                                 "intermediate_size": 1792, "vocab": 16000}}
BATCH = 8
PROMPT_WORDS = 32
COMPLETION_WORDS = 95  # + EOS = 96 completion tokens; 128 tokens per sequence


def build(work: Path, size: str | None, n_pairs: int, lengths: str = "equal",
          model: str | None = None) -> tuple[Path, Path, float]:
    """The model (the random Llama of ``size``, or ``model``'s directory), the pairs, and the
    real tokens per step (chosen and rejected, each with its prompt and EOS; for variable
    lengths the mean over the data)."""
    model_dir, words = model_and_words(work, model, **({} if model else SIZES[size]))
    prompt_high, completion_high = ((MODEL_TAIL - words.prompt_specials, MODEL_TAIL - 1)
                                    if model else (128, 160))
    rng = random.Random(0)
    records, counts = [], []
    for _ in range(n_pairs):
        if lengths == "equal":
            p, c, r = PROMPT_WORDS, COMPLETION_WORDS, COMPLETION_WORDS
        else:
            p = long_tailed(rng, 24, 0.8, 4, prompt_high)
            c, r = (long_tailed(rng, 40, 0.9, 2, completion_high) for _ in range(2))
        # each completion ends with EOS
        counts.append({"prompt": p + words.prompt_specials, "chosen": c + 1, "rejected": r + 1})
        records.append({"prompt": words.prompt(rng, p), "chosen": words.completion(rng, c),
                        "rejected": words.completion(rng, r)})
    check_token_counts(model_dir, records, counts)
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    tokens = sum(2 * n["prompt"] + n["chosen"] + n["rejected"] for n in counts)
    return model_dir, data, BATCH * tokens / n_pairs


def worker_preflab(model_dir: str, data: str, out: str, steps: int, warmup: int,
                   per_step: float, padding_free: bool = False, loss: str = "sigmoid",
                   checkpointing: bool = False, max_length: int = 512) -> dict:
    from preflab.algorithms import dpo

    dpo.main(["--model", model_dir, "--data", data, "--output-dir", out, "--max-steps", str(steps),
              "--batch-size", str(BATCH), "--eval-fraction", "0", "--max-length", str(max_length),
              "--learning-rate", "1e-6", "--warmup-ratio", "0", "--beta", "0.1", "--loss", loss,
              "--log-every", "1", "--no-progress", "--overwrite",
              *(["--padding-free"] if padding_free else []),
              *(["--gradient-checkpointing"] if checkpointing else [])])
    seconds, _, rows = preflab_seconds(out, warmup)
    return {"tokens_per_sec": per_step * (steps - warmup) / seconds,
            "peak_rss_bytes": json.loads(Path(out, "summary.json").read_text())["peak_rss_bytes"],
            "first_loss": rows[0]["loss"]}


def worker_trl(model_dir: str, data: str, out: str, steps: int, warmup: int,
               per_step: float, loss: str = "sigmoid", checkpointing: bool = False,
               max_length: int = 512) -> dict:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    dataset = load_dataset("json", data_files=data, split="train")
    clock, stamps = step_clock()

    args = DPOConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=BATCH,
                     learning_rate=1e-6, beta=0.1, loss_type=[loss], max_length=max_length,
                     logging_steps=1, save_strategy="no", report_to=[], lr_scheduler_type="cosine",
                     warmup_steps=0, use_cpu=True, dataloader_num_workers=0, seed=0,
                     disable_tqdm=True, bf16=False, fp16=False,
                     gradient_checkpointing=checkpointing)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[clock])
    start = time.perf_counter()
    trainer.train()
    seconds = seconds_after_warmup(stamps, warmup, start)
    first = next((h["loss"] for h in trainer.state.log_history if "loss" in h), float("nan"))
    return {"tokens_per_sec": per_step * (steps - warmup) / seconds,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "first_loss": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", choices=tuple(SIZES),
                        help="the random Llama (default: small)")
    add_model_flag(parser)
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each, alternating; the best of each is reported (less noise)")
    parser.add_argument("--lengths", choices=("equal", "variable"), default="equal")
    parser.add_argument("--loss", choices=("sigmoid", "ipo"), default="sigmoid")
    add_checkpointing_flag(parser, "DPOConfig")
    parser.add_argument("--worker", choices=("preflab", "preflab-packed", "trl"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--per-step", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--max-length", type=int, default=512, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        common = (*args.paths, args.steps, args.warmup, args.per_step)
        mode = args.gradient_checkpointing
        if args.worker == "trl":
            result = worker_trl(*common, loss=args.loss, checkpointing=checkpoints(mode, "trl"),
                                max_length=args.max_length)
        else:
            result = worker_preflab(*common, padding_free=args.worker == "preflab-packed",
                                    loss=args.loss, checkpointing=checkpoints(mode, "preflab"),
                                    max_length=args.max_length)
        print("RESULT " + json.dumps(result))
        return
    settle_model_flags(parser, args, size="small")
    print_command()
    trl = require_trl()
    import torch
    import transformers

    max_length = MODEL_MAX_LENGTH if args.model and args.lengths == "variable" else 512
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir, data, per_step = build(work, args.size, BATCH * args.steps, args.lengths,
                                          args.model)
        per_sequence = per_step / (2 * BATCH)
        shape = (f"{per_sequence:.0f} tokens per sequence" if args.lengths == "equal" else
                 f"variable lengths, {per_sequence:.0f} real tokens per sequence on average")
        print(f"model: {describe_model(args.model, model_dir)}; {BATCH} pairs per step, {shape}; "
              f"max length {max_length}; {args.loss} loss, beta 0.1, reference = frozen copy; "
              f"{args.steps} steps ({args.warmup} warm-up, not timed); gradient checkpointing: "
              f"{args.gradient_checkpointing}")
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
              f"trl {trl.__version__}, {torch.get_num_threads()} threads")
        names = ("trl", "preflab") + (("preflab-packed",) if args.lengths == "variable" else ())
        results = run_alternating(
            __file__, names, args.repeats,
            lambda name: ["--steps", str(args.steps), "--warmup", str(args.warmup), "--paths",
                          str(model_dir), str(data), str(work / f"run-{name}"),
                          "--per-step", str(per_step), "--loss", args.loss,
                          "--gradient-checkpointing", args.gradient_checkpointing,
                          "--max-length", str(max_length)],
            lambda name, r: (f"{name:15s} {r['tokens_per_sec']:9.0f} tokens/s   peak RSS "
                             f"{r['peak_rss_bytes'] / 2**20:7.0f} MiB   first-step loss "
                             f"{r['first_loss']:.4f}"))
        for name in names[1:]:
            speed = results[name]["tokens_per_sec"] / results["trl"]["tokens_per_sec"]
            rss = results[name]["peak_rss_bytes"] / results["trl"]["peak_rss_bytes"]
            print(f"{name} / TRL: throughput x{speed:.2f}, peak RSS x{rss:.2f}")


if __name__ == "__main__":
    main()
