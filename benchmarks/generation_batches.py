"""Sampling in batches of like prompt length against batches in data order, in the same run.

``preflab.generation.generate`` sorts its prompts by length, longest first, before cutting
them into batches: a left-padded batch computes every row at its longest prompt's width. This
times it against the same prompts cut into batches in data order (each batch passed to
``generate`` alone, as it was sampled before), on the 20.3M-parameter Llama of the other
benchmarks: 64 prompts of long-tailed length (log-normal, median 24 tokens, sigma 0.8, 4 to
128), batches of 16, 32 new tokens. Each way twice, alternating.

    python benchmarks/generation_batches.py [--prompts 64] [--batch-size 16] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from common import LLAMA_20M, long_tailed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    from preflab import models
    from preflab.generation import generate
    from preflab.models.tiny import save_tiny_model

    words = [f"w{i}" for i in range(8000)]
    with tempfile.TemporaryDirectory() as tmp:
        path = save_tiny_model(Path(tmp) / "model", words, arch="llama", **LLAMA_20M,
                               max_positions=600)
        tokenizer, model = models.load_tokenizer(str(path)), models.load_causal_lm(str(path))
    rng = random.Random(0)
    prompts = [" ".join(rng.choices(words, k=long_tailed(rng, 24, 0.8, 4, 128)))
               for _ in range(args.prompts)]
    b, n = args.batch_size, args.new_tokens

    def data_order():
        for k in range(0, len(prompts), b):
            generate(model, tokenizer, prompts[k : k + b], max_new_tokens=n, batch_size=b, seed=k)

    def grouped():
        generate(model, tokenizer, prompts, max_new_tokens=n, batch_size=b, seed=0)

    best = {}
    for name, fn in (("data order", data_order), ("grouped", grouped)) * 2:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        best[name] = min(best.get(name, seconds), seconds)
        print(f"{name:10s} {seconds:.2f} s", flush=True)
    print(f"grouped / data order: {best['data order'] / best['grouped']:.2f}x faster")


if __name__ == "__main__":
    main()
