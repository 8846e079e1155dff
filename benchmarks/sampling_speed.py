"""Sampling speed: ``preflab.generation.generate`` against transformers' own sampling
(``model.generate(do_sample=True)``, what TRL's trainers call), same model, same prompts, in
the same process, alternating, best of ``--repeats``.

Both sample at temperature 1 from the full softmax with the KV cache. preflab draws each token
itself (``generation.draw``: one uniform per row, inverting the cumulative distribution) and
also records every token's log-prob and decodes the completions; transformers draws with
``torch.multinomial`` (one exponential per vocabulary entry). The model is the 20.3M-parameter
Llama of the other benchmarks (vocabulary 8,000, or ``--vocab``), randomly initialised, so it
almost never samples EOS: each side runs ``--new-tokens`` steps (checked: a row that ends on
EOS early still waits for the others, so the steps, and the work, are the same).

``--model PATH`` (a Hugging Face directory or a .gguf file, e.g. SmolLM2-135M-Instruct's)
samples from that model instead (``--vocab`` with it is an error), with prompts of words that
are one token each of its tokenizer, ``--new-tokens`` 128 unless given: 32 prompts x 128 new
tokens. A trained model may end a row on EOS early; the other rows keep the steps the same,
and the check above still holds unless every row ends early.

Peak RSS: each timed call's own, read from Linux's ``VmHWM`` after resetting it to the current
RSS (``/proc/self/clear_refs``), so both sides' peaks count the same loaded model; the rise
over the RSS before the call is printed beside it. Elsewhere the peak is not measured.

The output starts with the command line, then one line per side, then preflab's tokens/s and
peak RSS as ratios of transformers'.

    python benchmarks/sampling_speed.py [--rows 32] [--prompt-tokens 32] [--new-tokens 64]
        [--vocab 8000 | --model DIR_OR_GGUF] [--repeats 5]
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()
    settle_model_flags(parser, args, vocab=8000)
    if args.new_tokens is None:
        args.new_tokens = 128 if args.model else 64
    print_command()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from preflab.generation import generate

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
    config = GenerationConfig(do_sample=True, temperature=1.0, top_k=None, top_p=1.0,
                              max_new_tokens=args.new_tokens, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id)
    print(f"{described}, vocabulary {len(tokenizer):,}; {args.rows} "
          f"prompts of {batch['input_ids'].shape[1]} tokens, {args.new_tokens} new tokens each; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    def ours() -> int:  # decoding steps: the longest completion
        rows = generate(model, tokenizer, prompts, max_new_tokens=args.new_tokens,
                        batch_size=args.rows, seed=0)
        return max(len(r[0].completion_ids) for r in rows)

    def theirs() -> int:
        with torch.inference_mode():
            out = model.generate(**batch, generation_config=config)
        return out.shape[1] - batch["input_ids"].shape[1]

    sides = {"transformers generate(do_sample=True)": theirs, "preflab generate": ours}
    best = dict.fromkeys(sides, float("inf"))
    peak = dict.fromkeys(sides, 0)  # the highest of each side's calls
    rise = dict.fromkeys(sides, 0)
    for fn in sides.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in sides.items():
            before = reset_peak_rss()
            start = time.perf_counter()
            steps = fn()
            seconds = time.perf_counter() - start
            if steps != args.new_tokens:
                raise SystemExit(f"{name} stopped after {steps} steps, not {args.new_tokens} "
                                 "(every row sampled EOS): the timing would not compare")
            best[name] = min(best[name], seconds)
            if before is not None:
                high = 1024 * _status_kib("VmHWM")
                peak[name], rise[name] = max(peak[name], high), max(rise[name], high - before)
    for name, seconds in best.items():
        memory = (f"   peak RSS {peak[name] / 2**20:6.0f} MiB (+{rise[name] / 2**20:.0f} MiB "
                  "over the RSS before the call)" if peak[name] else "")
        print(f"{name:40s} {seconds:6.3f} s   {args.rows * args.new_tokens / seconds:8.0f} "
              f"tokens/s{memory}")
    (peer, mine), (peer_rss, my_rss) = best.values(), peak.values()
    memory = f", peak RSS x{my_rss / peer_rss:.2f}" if peer_rss else ""
    print(f"preflab / transformers: x{peer / mine:.2f} tokens/s{memory} (best of {args.repeats})")


if __name__ == "__main__":
    main()
