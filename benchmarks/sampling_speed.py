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

    python benchmarks/sampling_speed.py [--rows 32] [--prompt-tokens 32] [--new-tokens 64]
        [--vocab 8000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from common import LLAMA_20M


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from preflab.generation import generate
    from preflab.tiny import save_tiny_model

    words = [f"w{i}" for i in range(args.vocab)]
    rng = random.Random(0)
    prompts = [" ".join(rng.choices(words, k=args.prompt_tokens)) for _ in range(args.rows)]
    with tempfile.TemporaryDirectory() as tmp:
        path = save_tiny_model(tmp, words, arch="llama", **LLAMA_20M, max_positions=512)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    config = GenerationConfig(do_sample=True, temperature=1.0, top_k=None, top_p=1.0,
                              max_new_tokens=args.new_tokens, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Llama, {n_params / 1e6:.1f}M parameters, vocabulary {len(tokenizer):,}; {args.rows} "
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
    for fn in sides.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in sides.items():
            start = time.perf_counter()
            steps = fn()
            seconds = time.perf_counter() - start
            if steps != args.new_tokens:
                raise SystemExit(f"{name} stopped after {steps} steps, not {args.new_tokens} "
                                 "(every row sampled EOS): the timing would not compare")
            best[name] = min(best[name], seconds)
    for name, seconds in best.items():
        print(f"{name:40s} {seconds:6.3f} s   {args.rows * args.new_tokens / seconds:8.0f} "
              "tokens/s")
    peer, mine = best.values()
    print(f"preflab / transformers: x{peer / mine:.2f} tokens/s (best of {args.repeats})")


if __name__ == "__main__":
    main()
