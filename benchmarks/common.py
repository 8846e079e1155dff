"""What the benchmark scripts share: long-tailed lengths, and running each side's worker in a
fresh process, alternating, keeping the best of the repeats."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Callable, Sequence


def long_tailed(rng: random.Random, median: int, sigma: float, low: int, high: int) -> int:
    """A log-normal length around ``median``, clipped to ``[low, high]``."""
    return max(low, min(high, round(rng.lognormvariate(math.log(median), sigma))))


def run_alternating(script: str, names: Sequence[str], repeats: int,
                    worker_args: Callable[[str], list[str]],
                    show: Callable[[str, dict], str]) -> dict[str, dict]:
    """Run ``script --worker NAME *worker_args(NAME)`` for each name, ``repeats`` rounds in
    turn, each in a fresh process; print ``show(name, result)`` as each ends; return the best
    result (highest ``tokens_per_sec``) of each name. A worker prints ``RESULT {json}``."""
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "WANDB_DISABLED": "true"}
    results: dict[str, dict] = {}
    for name in [n for _ in range(repeats) for n in names]:
        cmd = [sys.executable, script, "--worker", name, *worker_args(name)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            sys.exit(f"{name} worker failed:\n{proc.stderr[-4000:]}")
        r = json.loads(line[0][7:])
        if name not in results or r["tokens_per_sec"] > results[name]["tokens_per_sec"]:
            results[name] = r
        print(show(name, r), flush=True)
    return results
