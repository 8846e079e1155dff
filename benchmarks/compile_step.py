"""A training step eager against ``torch.compile``d, in fresh processes, in the same run.

The 20.3M-parameter Llama of the other benchmarks, a batch of 8 x 256 tokens, AdamW: the
first step (compilation included) and the mean of 5 steady steps after one more, for eager,
compiled with static shapes and compiled with ``dynamic=True``.

    python benchmarks/compile_step.py [--tokens 256]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from common import LLAMA_20M


def worker(mode: str, length: int) -> None:
    import torch

    from preflab.models.tiny import build_random_causal_lm

    model = build_random_causal_lm("llama", 8000, **LLAMA_20M, max_positions=600, seed=0)
    model.train()
    if mode != "eager":
        model.compile(dynamic=mode == "dynamic")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 8000, (8, length))

    def step():
        model(input_ids=x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    step()
    start = time.perf_counter()
    for _ in range(5):
        step()
    steady = (time.perf_counter() - start) / 5
    print(f"{mode:8s} first step {first:5.1f} s, steady {steady:.3f} s/step, "
          f"{8 * length / steady:6.0f} tokens/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--worker", choices=("eager", "static", "dynamic"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.tokens)
        return
    for mode in ("eager", "static", "dynamic"):
        subprocess.run([sys.executable, __file__, "--worker", mode, "--tokens", str(args.tokens)],
                       check=True)


if __name__ == "__main__":
    main()
