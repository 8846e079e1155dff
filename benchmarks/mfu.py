"""Model FLOP utilisation (MFU) of `preflab sft` and `preflab dpo` steps on this machine.

MFU = (model FLOPs per token x tokens per second) / the machine's dense matmul peak, both
measured here, in this run:

- **Peak.** float32 matrix products (``torch.mm``) of square sizes 512 to 2048 and of the
  model's own layer shapes, each timed best of 5; the peak is the fastest of them. On a GPU
  the same is measured in the dtype given (or pass ``--peak-tflops`` for the data sheet's).
- **FLOPs per token**, written out from the architecture (Llama: no biases, SwiGLU MLP), for
  a sequence of T tokens, with d = hidden size, d_kv = key/value heads x head size, I = the
  MLP's size, L = layers, V = vocabulary; a multiply-add counts 2:

      forward = L x [2 d (2 d + 2 d_kv)     q, k, v, o projections
                     + 4 T d                attention scores and weighted values (PaLM's count,
                                            no discount for the causal mask)
                     + 6 d I]               gate, up and down projections
                + 2 d V x h                 the LM head, on the fraction h of positions it
                                            runs on: preflab runs it from the position before
                                            the first completion token (h = (C + 1) / T for
                                            a completion of C tokens)
      SFT step = 3 x forward per token      (backward = 2 x forward)
      DPO step = 4 x forward per token      (the policy's forward and backward, and the frozen
                                            reference's forward)

- **Tokens per second**: the steady-state steps of the ~20M-parameter Llama the throughput
  benchmarks use (``sft_vs_trl.py``, ``dpo_throughput.py --size 20m``), on equal-length data
  (no padding: every token counted is a real one), each in a fresh process, best of
  ``--repeats``.

``--model PATH`` (a Hugging Face directory or a .gguf file, e.g. SmolLM2-135M-Instruct's)
measures that model's steps instead, on the same equal-length data drawn from words that are
one token each of its tokenizer.

``--profile`` then runs a few steps of each under ``torch.profiler`` and prints where the CPU
time goes, by operator and grouped (matrix products, attention, element-wise, optimizer, other).

    python benchmarks/mfu.py [--steps 10] [--warmup 2] [--repeats 2] [--model DIR_OR_GGUF]
        [--profile]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import dpo_throughput
import sft_vs_trl
from common import add_model_flag, describe_model, print_command, run_alternating


def matmul_peak(device: str = "cpu", dtype_name: str = "float32",
                shapes: list[tuple[int, int, int]] | None = None) -> tuple[float, dict]:
    """The fastest dense matmul FLOP/s over square sizes and ``shapes`` (m, k, n)."""
    import torch

    dtype = getattr(torch, dtype_name)
    sizes = [(n, n, n) for n in (512, 1024, 2048)] + list(shapes or [])
    found = {}
    for m, k, n in sizes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        for _ in range(2):
            torch.mm(a, b)
        best = float("inf")
        reps = max(1, int(2e9 / (2 * m * k * n)))  # about 2 GFLOP per timing
        for _ in range(5):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - start) / reps)
        found[f"{m}x{k} @ {k}x{n}"] = 2 * m * k * n / best
    return max(found.values()), found


def forward_flops_per_token(config, seq_len: float, head_fraction: float = 1.0) -> dict[str, float]:
    """The forward pass's FLOPs per token, by part (module docstring)."""
    d = config.hidden_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    d_kv = kv * (d // heads)
    inter, layers, vocab = config.intermediate_size, config.num_hidden_layers, config.vocab_size
    parts = {"projections": layers * 2 * d * (2 * d + 2 * d_kv),
             "attention": layers * 4 * seq_len * d,
             "mlp": layers * 6 * d * inter,
             "lm_head": 2 * d * vocab * head_fraction}
    parts["total"] = sum(parts.values())
    return parts


def _profile(step: str, model_dir: str, data: str, out: str, steps: int) -> None:
    """Run ``steps`` steps of ``step`` (sft or dpo) under the profiler; print the top operators
    by self CPU time and the time grouped by kind."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        if step == "sft":
            sft_vs_trl.worker_preflab(model_dir, data, out, steps, 1, 1.0)
        else:
            dpo_throughput.worker_preflab(model_dir, data, out, steps, 1, 1.0)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    groups = {"matrix products": ("mm", "addmm", "bmm", "matmul", "linear"),
              "attention": ("scaled_dot_product", "_flash_attention", "softmax"),
              "optimizer": ("_foreach", "adam", "lerp", "addcdiv", "addcmul", "sqrt_"),
              "element-wise": ("mul", "add", "silu", "sigmoid", "exp", "rsqrt", "pow", "mean",
                               "neg", "cat", "copy_", "div", "sub", "log_softmax", "gather",
                               "sum", "where", "fill_", "zero_", "embedding", "index")}
    grouped = dict.fromkeys([*groups, "other"], 0.0)
    for e in events:
        name = e.key.removeprefix("aten::").lower()
        kind = next((g for g, keys in groups.items() if any(k in name for k in keys)), "other")
        grouped[kind] += e.self_cpu_time_total
    print(f"\n{step}: where the CPU time of {steps} steps goes (whole run, set-up included)")
    for kind, t in sorted(grouped.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:16s} {100 * t / total:5.1f}%")
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also profile a few steps of each")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="use this peak (TFLOP/s) instead of measuring it")
    add_model_flag(parser, None)
    parser.add_argument("--worker", choices=("sft", "dpo"), help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--per", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        fn = sft_vs_trl.worker_preflab if args.worker == "sft" else dpo_throughput.worker_preflab
        result = fn(*args.paths, args.steps, args.warmup, args.per)
        print("RESULT " + json.dumps(result))
        return
    print_command()

    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sft_model, sft_data, sft_per_example = sft_vs_trl.build(
            work / "sft", sft_vs_trl.BATCH * args.steps, "equal", args.model)
        dpo_model, dpo_data, dpo_per_step = dpo_throughput.build(
            work / "dpo", None if args.model else "20m", dpo_throughput.BATCH * args.steps,
            "equal", args.model)
        config = transformers.AutoConfig.from_pretrained(sft_model)
        sft_len = sft_per_example
        dpo_len = dpo_throughput.PROMPT_WORDS + dpo_throughput.COMPLETION_WORDS + 1
        d, inter = config.hidden_size, config.intermediate_size
        shapes = [(sft_vs_trl.BATCH * int(sft_len), d, inter),
                  (sft_vs_trl.BATCH * int(sft_len), d, d)]
        print(f"model: {describe_model(args.model, sft_model)} (d {d}, {config.num_hidden_layers} "
              f"layers, MLP {inter}, vocabulary {config.vocab_size}); torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, float32, CPU")
        if args.peak_tflops:
            peak, found = args.peak_tflops * 1e12, {}
        else:
            peak, found = matmul_peak(shapes=shapes)
        for shape, flops in found.items():
            print(f"matmul {shape:22s} {flops / 1e9:7.1f} GFLOP/s")
        print(f"peak: {peak / 1e9:.1f} GFLOP/s")

        rows = {"sft": (sft_model, sft_data, sft_per_example, sft_len, 3),
                "dpo": (dpo_model, dpo_data, dpo_per_step, dpo_len, 4)}
        head = {"sft": (sft_vs_trl.EQUAL_COMPLETION + 2) / sft_len,  # completion + EOS + 1
                "dpo": (dpo_throughput.COMPLETION_WORDS + 2) / dpo_len}
        results = run_alternating(
            __file__, list(rows), args.repeats,
            lambda name: ["--steps", str(args.steps), "--warmup", str(args.warmup), "--paths",
                          str(rows[name][0]), str(rows[name][1]), str(work / f"run-{name}"),
                          "--per", str(rows[name][2])],
            lambda name, r: f"{name}: {r['tokens_per_sec']:.0f} tokens/s")
        for name, (_, _, _, seq_len, passes) in rows.items():
            fwd = forward_flops_per_token(transformers.AutoConfig.from_pretrained(rows[name][0]),
                                          seq_len, head[name])
            per_token = passes * fwd["total"]
            achieved = results[name]["tokens_per_sec"] * per_token
            split = ", ".join(f"{k} {100 * v / fwd['total']:.0f}%" for k, v in fwd.items()
                              if k != "total")
            print(f"{name}: {seq_len:.0f} tokens per sequence, the head on {100 * head[name]:.0f}% "
                  f"of them; {per_token / 1e6:.1f} MFLOP per "
                  f"token ({passes} x forward; forward: {split}); "
                  f"{results[name]['tokens_per_sec']:.0f} tokens/s = {achieved / 1e9:.1f} "
                  f"GFLOP/s = MFU {100 * achieved / peak:.1f}% of the measured peak")
        if args.profile:
            for name in rows:
                _profile(name, str(rows[name][0]), str(rows[name][1]), str(work / f"prof-{name}"),
                         max(4, args.warmup + 2))


if __name__ == "__main__":
    sys.exit(main())
