"""What the benchmark scripts share: the ~20M-parameter Llama, long-tailed lengths, running each
side's worker in a fresh process (alternating, keeping the best of the repeats), timing the
steps after the warm-up on either side, and the check that TRL is installed."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

LLAMA_20M = {"hidden_size": 384, "num_layers": 8, "num_heads": 6, "intermediate_size": 1024}
"""The 20.3M-parameter Llama of the throughput benchmarks (with a vocabulary of 8,000 words)."""


def long_tailed(rng: random.Random, median: int, sigma: float, low: int, high: int) -> int:
    """A log-normal length around ``median``, clipped to ``[low, high]``."""
    return max(low, min(high, round(rng.lognormvariate(math.log(median), sigma))))


def run_alternating(script: str, names: Sequence[str], repeats: int,
                    worker_args: Callable[[str], list[str]],
                    show: Callable[[str, dict], str], *,
                    key: str = "tokens_per_sec") -> dict[str, dict]:
    """Run ``script --worker NAME *worker_args(NAME)`` for each name, ``repeats`` rounds in
    turn, each in a fresh process; print ``show(name, result)`` as each ends; return the best
    result (highest ``key``) of each name. A worker prints ``RESULT {json}``."""
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "WANDB_DISABLED": "true"}
    results: dict[str, dict] = {}
    for name in [n for _ in range(repeats) for n in names]:
        cmd = [sys.executable, script, "--worker", name, *worker_args(name)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            sys.exit(f"{name} worker failed:\n{proc.stderr[-4000:]}")
        r = json.loads(line[0][7:])
        if name not in results or r[key] > results[name][key]:
            results[name] = r
        print(show(name, r), flush=True)
    return results


def require_trl():
    """The ``trl`` module, or exit saying how to install it."""
    try:
        import trl
    except ImportError:
        sys.exit("this benchmark compares against TRL: pip install 'preflab[bench]' "
                 "(or pip install trl)")
    return trl


def step_clock():
    """A transformers ``TrainerCallback`` stamping the end of every step, and its stamps."""
    from transformers import TrainerCallback

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    return Clock(), stamps


def seconds_after_warmup(stamps: list[float], warmup: int, start: float) -> float:
    """Seconds of the steps after ``warmup`` (``stamps[i]`` ends step i+1; ``start`` is the
    training's start, used when nothing is warm-up)."""
    return stamps[-1] - (stamps[warmup - 1] if warmup else start)


def preflab_seconds(out: str | Path, warmup: int) -> tuple[float, int, list[dict]]:
    """From a preflab run's ``metrics.jsonl`` (logged every step): the seconds of the training
    steps after ``warmup``, the last step, and the training rows."""
    rows = [json.loads(x) for x in Path(out, "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "lr" in r and "elapsed_s" in r]  # training rows
    start = next(r["elapsed_s"] for r in steps if r["step"] == warmup) if warmup else 0.0
    return steps[-1]["elapsed_s"] - start, steps[-1]["step"], steps


def add_checkpointing_flag(parser, peer_config: str) -> None:
    """``--gradient-checkpointing off|on|defaults`` (default off): off or on sets it on BOTH
    sides, so they keep the same activations; ``defaults`` leaves each side at its own (TRL's
    ``peer_config``: on; preflab and transformers: off)."""
    parser.add_argument("--gradient-checkpointing", choices=("off", "on", "defaults"),
                        default="off", help="off or on for both sides; defaults: each side's "
                        f"own (TRL's {peer_config}: on, preflab: off)")


def checkpoints(mode: str, side: str) -> bool:
    """Whether ``side`` (``"trl"`` or ``"preflab"``) checkpoints under ``mode`` (the flag above):
    TRL unless "off", since checkpointing is its default; preflab only when "on"."""
    return mode != "off" if side == "trl" else mode == "on"
