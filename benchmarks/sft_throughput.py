"""SFT throughput and peak memory: `preflab sft` against a plain hand-written PyTorch loop.

Both train the same ~20M-parameter Llama (built here, random init) on the same data
(batch 8 x 256 tokens, completion-only loss), with the same AdamW, cosine schedule and
gradient clipping, each in a fresh process so peak RSS is its own. Throughput is measured
over steady-state steps (the first steps, which pay for warm-up allocations, are left out
of both). Prints tokens/s and peak RSS for each and preflab's overhead over the plain loop.

    python benchmarks/sft_throughput.py [--steps 12] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from common import LLAMA_20M, run_alternating

VOCAB_WORDS = [f"w{i}" for i in range(8000)]
SEQ_LEN = 256
PROMPT_LEN = 32
BATCH = 8


def build(workdir: Path, steps: int) -> tuple[Path, Path]:
    from preflab.models.tiny import save_tiny_model

    model_dir = save_tiny_model(
        workdir / "model", VOCAB_WORDS, arch="llama", **LLAMA_20M, max_positions=SEQ_LEN + 8,
    )
    rng = random.Random(0)
    # completion: SEQ_LEN - PROMPT_LEN - 1 words, plus the EOS preflab appends = SEQ_LEN tokens
    lines = []
    for _ in range(BATCH * steps):
        words = rng.choices(VOCAB_WORDS, k=SEQ_LEN - 1)
        lines.append(json.dumps({"prompt": " ".join(words[:PROMPT_LEN]),
                                 "completion": " ".join(words[PROMPT_LEN:])}))
    data = workdir / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return model_dir, data


def worker_preflab(model_dir: str, data: str, out: str, steps: int, warmup: int) -> dict:
    from preflab.algorithms import sft

    sft.main(["--model", model_dir, "--data", data, "--output-dir", out, "--max-steps", str(steps),
              "--batch-size", str(BATCH), "--eval-fraction", "0", "--max-length", str(SEQ_LEN),
              "--learning-rate", "1e-4", "--log-every", "1", "--no-progress", "--overwrite"])
    rows = [json.loads(x) for x in Path(out, "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "tokens_per_sec" in r and r["step"] > warmup]
    # Each logged row covers one step: tokens / seconds over the steady-state steps.
    seconds = sum(BATCH * SEQ_LEN / r["tokens_per_sec"] for r in timed)
    summary = json.loads(Path(out, "summary.json").read_text())
    return {"tokens_per_sec": BATCH * SEQ_LEN * len(timed) / seconds,
            "peak_rss_bytes": summary["peak_rss_bytes"], "final_loss": rows[-2].get("loss")}


def worker_plain(model_dir: str, data: str, steps: int, warmup: int) -> dict:
    """The loop a practitioner would write by hand, using the model's built-in loss."""
    import math
    import resource

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.train()
    records = [json.loads(x) for x in Path(data).read_text().splitlines()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    ids, labels = [], []  # tokenised up front, as preflab does
    for r in records:
        p = tokenizer(r["prompt"]).input_ids
        c = tokenizer(r["completion"]).input_ids + [tokenizer.eos_token_id]
        ids.append(p + c)
        labels.append([-100] * len(p) + c)
    tokens, start = 0, None
    for step in range(steps):
        if step == warmup:
            tokens, start = 0, time.perf_counter()
        rows = slice(step * BATCH, (step + 1) * BATCH)
        input_ids = torch.tensor(ids[rows])
        loss = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                     labels=torch.tensor(labels[rows])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += input_ids.numel()
    seconds = time.perf_counter() - start
    return {"tokens_per_sec": tokens / seconds,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "final_loss": loss.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each, alternating; the best of each is reported (less noise)")
    parser.add_argument("--worker", choices=("preflab", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        model_dir, data, out = args.paths
        result = (worker_preflab(model_dir, data, out, args.steps, args.warmup)
                  if args.worker == "preflab" else worker_plain(model_dir, data, args.steps, args.warmup))
        print("RESULT " + json.dumps(result))
        return

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir, data = build(work, args.steps)
        n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM
                       .from_pretrained(model_dir).parameters())
        print(f"model: Llama, {n_params / 1e6:.1f}M parameters; batch {BATCH} x {SEQ_LEN} tokens; "
              f"{args.steps} steps ({args.warmup} warm-up, not timed); torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        results = run_alternating(
            __file__, ("plain", "preflab"), args.repeats,
            lambda name: ["--steps", str(args.steps), "--warmup", str(args.warmup), "--paths",
                          str(model_dir), str(data), str(work / "run")],
            lambda name, r: (f"{name:8s} {r['tokens_per_sec']:9.0f} tokens/s   peak RSS "
                             f"{r['peak_rss_bytes'] / 2**20:7.0f} MiB   last loss "
                             f"{r['final_loss']:.3f}"))
        ratio = results["preflab"]["tokens_per_sec"] / results["plain"]["tokens_per_sec"]
        rss = results["preflab"]["peak_rss_bytes"] / results["plain"]["peak_rss_bytes"]
        print(f"preflab / plain: throughput x{ratio:.3f} (overhead {100 * (1 - ratio):+.1f}%), "
              f"peak RSS x{rss:.3f}")


if __name__ == "__main__":
    main()
