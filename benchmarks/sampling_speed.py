"""Sampling speed: ``preflab.generation.generate`` against transformers' own sampling
(``model.generate(do_sample=True)``, what TRL's trainers call), same model, same prompts, in
the same process, alternating, best of ``--repeats``; and each decoding step's time against
this machine's bound for it.

Both sample at temperature 1 from the full softmax with the KV cache. preflab decodes with its
own loop (``preflab.generation.decoding``), draws each token itself (``generation.draw``: one uniform per
row, inverting the cumulative distribution), records every token's log-prob and decodes the
completions; transformers draws with ``torch.multinomial`` (one exponential per vocabulary
entry). A third side is preflab through ``model.generate`` (its path before its own loop, and
still its path for a model the loop cannot drive); ``--caches`` adds preflab's loop with
transformers' ``DynamicCache`` and ``StaticCache`` in place of its own in-place cache. The
model is the 20.3M-parameter Llama of the other benchmarks (vocabulary 8,000, or ``--vocab``),
randomly initialised, so it almost never samples EOS: each side runs ``--new-tokens`` steps
(checked: a row that ends on EOS early still waits for the others, so the steps, and the work,
are the same).

``--model PATH`` (a Hugging Face directory or a .gguf file, e.g. SmolLM2-135M-Instruct's)
samples from that model instead (``--vocab`` with it is an error), with prompts of words that
are one token each of its tokenizer, ``--new-tokens`` 128 unless given: 32 prompts x 128 new
tokens. A trained model may end a row on EOS early; the other rows keep the steps the same,
and the check above still holds unless every row ends early.

Peak RSS: each timed call's own, read from Linux's ``VmHWM`` after resetting it to the current
RSS (``/proc/self/clear_refs``), so both sides' peaks count the same loaded model; the rise
over the RSS before the call is printed beside it. Elsewhere the peak is not measured.

**Per step.** A forward hook stamps the end of every forward. ``prefill`` is the time from
the call's start to the first forward's end (tokenizing and padding included), and a
decoding step the time from one forward's end to the next one's (sampling, then the forward
of the new tokens), averaged over the call.

**The bound** (Llama-family configs). A step computes ``rows`` tokens: FLOPs = rows x
(2 x the matmul parameters + attention over the cache, ``mfu.forward_flops_per_token`` at the
call's mean context length), and must read every weight matrix once and the whole KV cache
(2 x layers x KV heads x head size x context x rows values). It takes no less than the larger
of FLOPs / matmul peak and bytes / memory bandwidth, both measured here first:

- matmul peak at the step's shapes: each distinct projection ``[rows, in] x [in, out]``, as
  ``F.linear`` with the model's ``[out, in]`` weight and as ``mm`` with a ``[in, out]`` one,
  the faster of the two (hot in cache: repeated on one weight); the compute bound sums each
  projection's FLOPs over its shape's peak. Also a big square ``mm`` (the machine's peak) and
  the bound at that peak, the loosest.
- memory bandwidth: the sum of a 512 MiB tensor (a read, as a step's are).
- the step's matrix products alone on the model's own weights, in order (each weight read
  from memory, as in a step): the floor the forward's matmuls really meet here.

The output starts with the command line, then one line per side, then preflab's tokens/s and
peak RSS as ratios of transformers', then the bound.

    python benchmarks/sampling_speed.py [--rows 32] [--prompt-tokens 32] [--new-tokens 64]
        [--vocab 8000 | --model DIR_OR_GGUF] [--repeats 5] [--caches]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import tempfile
import time
from pathlib import Path

from common import (
    LLAMA_20M,
    add_model_flag,
    check_token_counts,
    describe_model,
    model_and_words,
    print_command,
    settle_model_flags,
)
from mfu import forward_flops_per_token, matmul_peak


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def reset_peak_rss() -> int | None:
    """Reset this process's peak RSS to its current RSS; return that in bytes (None where
    Linux's ``/proc/self/clear_refs`` is not there to do it)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return 1024 * _status_kib("VmRSS")
    except OSError:
        return None


def best_seconds(fn, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def step_shapes(config, rows: int) -> list[tuple[int, int, int]]:
    """Each decoding step's matrix products ``(rows, in, out)``, one entry per product."""
    d, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    inter = config.intermediate_size
    per_layer = [(d, heads * head_dim), (d, kv), (d, kv), (heads * head_dim, d),
                 (d, inter), (d, inter), (inter, d)]
    return [(rows, i, o) for i, o in per_layer * layers] + [(rows, d, config.vocab_size)]


def measure_machine(model, config, rows: int) -> dict:
    """Matmul peaks (per step shape, big square), memory bandwidth, and the step's matmuls on
    the model's own weights."""
    import torch
    import torch.nn.functional as F

    shapes = step_shapes(config, rows)
    peak, found = matmul_peak(shapes=sorted(set(shapes)))  # mm with [in, out]: NN layout
    per_shape = {}
    for m, k, n in sorted(set(shapes)):
        x, w = torch.randn(m, k), torch.randn(n, k)
        linear = 2 * m * k * n / best_seconds(lambda x=x, w=w: F.linear(x, w), 20)
        per_shape[(m, k, n)] = (linear, found[f"{m}x{k} @ {k}x{n}"])
    big = max(v for k, v in found.items() if k.startswith("2048x"))
    big_tensor = torch.ones(512 * 2**20 // 4)
    bandwidth = big_tensor.numel() * 4 / best_seconds(big_tensor.sum)
    del big_tensor
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {m.in_features: torch.randn(rows, m.in_features) for m in linears}

    def own_weights():
        for m in linears:
            F.linear(inputs[m.in_features], m.weight)

    with torch.inference_mode():
        streamed = best_seconds(own_weights, 3)
    return {"shapes": shapes, "per_shape": per_shape, "big": big, "bandwidth": bandwidth,
            "streamed": streamed, "weight_bytes": sum(m.weight.numel() * 4 for m in linears)}


def step_bound(config, rows: int, context: float, machine: dict) -> dict:
    flops = rows * forward_flops_per_token(config, context)["total"]
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    kv_bytes = 2 * config.num_hidden_layers * kv_heads * head_dim * context * rows * 4
    attention = rows * forward_flops_per_token(config, context)["attention"]
    at_shapes = sum(2 * m * k * n / max(machine["per_shape"][(m, k, n)])
                    for m, k, n in machine["shapes"]) + attention / machine["big"]
    memory = (machine["weight_bytes"] + kv_bytes) / machine["bandwidth"]
    return {"flops": flops, "bytes": machine["weight_bytes"] + kv_bytes,
            "compute_big": flops / machine["big"], "compute_shapes": at_shapes,
            "memory": memory, "bound": max(at_shapes, memory),
            "bound_big": max(flops / machine["big"], memory)}


@contextlib.contextmanager
def patched(module, name: str, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32, help="prompts sampled together")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int,
                        help="tokens sampled per prompt (default: 64; with --model, 128)")
    parser.add_argument("--vocab", type=int, help="the random Llama's (default: 8000)")
    add_model_flag(parser, "--vocab")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--caches", action="store_true",
                        help="also preflab's loop with DynamicCache and with StaticCache")
    args = parser.parse_args()
    settle_model_flags(parser, args, vocab=8000)
    if args.new_tokens is None:
        args.new_tokens = 128 if args.model else 64
    print_command()

    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DynamicCache,
        GenerationConfig,
        StaticCache,
    )

    from preflab.generation import decoding, generate

    with tempfile.TemporaryDirectory() as tmp:
        path, words = model_and_words(Path(tmp), args.model, vocab=args.vocab, **LLAMA_20M)
        rng = random.Random(0)
        prompts = [words.prompt(rng, args.prompt_tokens) for _ in range(args.rows)]
        check_token_counts(path, [{"prompt": p} for p in prompts],
                           [{"prompt": args.prompt_tokens + words.prompt_specials}] * args.rows)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        described = describe_model(args.model, path)
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    width = batch["input_ids"].shape[1]
    config = GenerationConfig(do_sample=True, temperature=1.0, top_k=None, top_p=1.0,
                              max_new_tokens=args.new_tokens, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id)
    print(f"{described}, vocabulary {len(tokenizer):,}; {args.rows} "
          f"prompts of {width} tokens, {args.new_tokens} new tokens each; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    stamps: list[float] = []
    model.register_forward_hook(lambda *_: stamps.append(time.perf_counter()))

    def ours() -> int:  # decoding steps: the longest completion
        rows = generate(model, tokenizer, prompts, max_new_tokens=args.new_tokens,
                        batch_size=args.rows, seed=0)
        return max(len(r[0].completion_ids) for r in rows)

    def theirs() -> int:
        with torch.inference_mode():
            out = model.generate(**batch, generation_config=config)
        return out.shape[1] - width

    def through_generate() -> int:
        with patched(decoding, "fits", lambda model: False):
            return ours()

    def with_cache(make):
        def side() -> int:
            with patched(decoding, "kv_cache", make):
                return ours()
        return side

    sides = {"transformers generate(do_sample=True)": theirs, "preflab generate": ours,
             "preflab through model.generate": through_generate}
    if args.caches:
        sides["preflab loop, DynamicCache"] = with_cache(
            lambda model, capacity: DynamicCache(config=model.config))
        sides["preflab loop, StaticCache"] = with_cache(
            lambda model, capacity: StaticCache(config=model.config, max_cache_len=capacity))
    best = dict.fromkeys(sides, float("inf"))
    prefill = dict.fromkeys(sides, float("inf"))
    step = dict.fromkeys(sides, float("inf"))  # seconds per decoding step
    peak = dict.fromkeys(sides, 0)  # the highest of each side's calls
    rise = dict.fromkeys(sides, 0)
    for fn in sides.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in sides.items():
            before = reset_peak_rss()
            stamps.clear()
            start = time.perf_counter()
            steps = fn()
            seconds = time.perf_counter() - start
            if steps != args.new_tokens:
                raise SystemExit(f"{name} stopped after {steps} steps, not {args.new_tokens} "
                                 "(every row sampled EOS): the timing would not compare")
            best[name] = min(best[name], seconds)
            prefill[name] = min(prefill[name], stamps[0] - start)
            step[name] = min(step[name], (stamps[-1] - stamps[0]) / (len(stamps) - 1))
            if before is not None:
                high = 1024 * _status_kib("VmHWM")
                peak[name], rise[name] = max(peak[name], high), max(rise[name], high - before)
    peer = "transformers generate(do_sample=True)"
    print(f"\n{'':40s} {'call':>8s} {'tokens/s':>9s} {'prefill':>8s} {'ms/step':>8s} "
          f"{'x peer (call, step)':>20s}")
    for name, seconds in best.items():
        memory = (f"   peak RSS {peak[name] / 2**20:6.0f} MiB (+{rise[name] / 2**20:.0f} MiB "
                  "over the RSS before the call)" if peak[name] else "")
        print(f"{name:40s} {seconds:7.3f}s {args.rows * args.new_tokens / seconds:9.0f} "
              f"{prefill[name]:7.3f}s {1e3 * step[name]:8.1f} {best[peer] / seconds:9.2f} "
              f"{step[peer] / step[name]:9.2f}{memory}")
    mine, peer_rss, my_rss = best["preflab generate"], peak[peer], peak["preflab generate"]
    memory = f", peak RSS x{my_rss / peer_rss:.2f}" if peer_rss else ""
    print(f"preflab / transformers: x{best[peer] / mine:.2f} tokens/s{memory} (best of "
          f"{args.repeats}, alternating)")
    print("\nThe bound, measured now:", flush=True)
    machine = measure_machine(model, model.config, args.rows)
    for (m, k, n), (linear, mm) in machine["per_shape"].items():
        print(f"  matmul [{m}, {k}] x [{k}, {n}]: F.linear {linear / 1e9:6.1f}, "
              f"mm {mm / 1e9:6.1f} GFLOP/s")
    print(f"  matmul 2048^3: {machine['big'] / 1e9:.1f} GFLOP/s; memory bandwidth (sum of "
          f"512 MiB): {machine['bandwidth'] / 1e9:.1f} GB/s")
    print(f"  the step's {len(machine['shapes'])} matrix products on the model's own weights: "
          f"{1e3 * machine['streamed']:.1f} ms")
    bound = step_bound(model.config, args.rows, width + (args.new_tokens + 1) / 2, machine)
    print(f"  per step: {bound['flops'] / 1e9:.2f} GFLOP, {bound['bytes'] / 1e6:.0f} MB read "
          f"(weights and the KV cache at the mean context)")
    print(f"  compute: {1e3 * bound['compute_shapes']:.1f} ms at the step's shapes' peaks, "
          f"{1e3 * bound['compute_big']:.1f} ms at the 2048^3 peak; memory: "
          f"{1e3 * bound['memory']:.1f} ms")
    print(f"  bound: {1e3 * bound['bound']:.1f} ms/step (at the 2048^3 peak: "
          f"{1e3 * bound['bound_big']:.1f})")
    for name, seconds in step.items():
        print(f"  {name:40s} {1e3 * seconds:7.1f} ms/step = {seconds / bound['bound']:.2f}x "
              f"the bound ({seconds / bound['bound_big']:.2f}x at the 2048^3 peak)")


if __name__ == "__main__":
    main()
