"""What the benchmark scripts share: the ~20M-parameter Llama, ``--model`` (a real model in its
place, and words that are one token each of its tokenizer), long-tailed lengths, running each
side's worker in a fresh process (alternating, keeping the best of the repeats), timing the
steps after the warm-up on either side, and the check that TRL is installed."""

from __future__ import annotations

import json
import math
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

LLAMA_20M = {"hidden_size": 384, "num_layers": 8, "num_heads": 6, "intermediate_size": 1024}
"""The 20.3M-parameter Llama of the throughput benchmarks (with a vocabulary of 8,000 words)."""
LLAMA_SIZES = {
    "small": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 384,
              "vocab": 2000},
    "20m": {**LLAMA_20M, "vocab": 8000},
}
"""``--size``'s random Llamas (``model_and_words``' keywords: the shape and the vocabulary)."""

MODEL_TAIL = 512
"""With ``--model``: the longest prompt, and the longest completion with its EOS, in tokens."""
MODEL_MAX_LENGTH = 2 * MODEL_TAIL
"""With ``--model`` and variable lengths: the max length both sides are given; it holds the
longest prompt and completion together, so neither side truncates."""
CACHE_ENV = "PREFLAB_BENCH_CACHE"


def print_command() -> None:
    """The command line of this run (with ``OMP_NUM_THREADS`` where set), so that a reader of
    the output can run it again."""
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ]
    print("$ " + shlex.join([*env, "python", *sys.argv]), flush=True)


def model_cache() -> Path:
    """Where a ``--model`` .gguf is converted to: ``$PREFLAB_BENCH_CACHE``, else
    ``$XDG_CACHE_HOME/preflab/benchmarks`` (``~/.cache/preflab/benchmarks``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base, "preflab", "benchmarks")


def add_model_flag(parser, shape_flags: str | None = "--size") -> None:
    """``--model PATH``. ``shape_flags``: the flags that shape the random Llama, which may not
    be given with it (``settle_model_flags``); None where the Llama has one shape."""
    either = f"; {shape_flags} with it is an error" if shape_flags else ""
    parser.add_argument(
        "--model", metavar="PATH",
        help="a Hugging Face model directory or a .gguf file: use that model's weights and "
             "tokenizer instead of building a random Llama (the text is drawn from words that "
             f"are one token each, so lengths in tokens stay as drawn){either}. A .gguf is "
             "dequantized (float32) once into a Hugging Face directory that both sides load, "
             f"under ${CACHE_ENV} (default: ~/.cache/preflab/benchmarks), named by the file's "
             "name, size and mtime")


def settle_model_flags(parser, args, **defaults) -> None:
    """Exit with a usage error where ``--model`` is given with one of ``defaults``' flags (they
    shape the random Llama, so their parser default is None); else fill each in: its default
    without ``--model``, None with it."""
    for name, default in defaults.items():
        flag = "--" + name.replace("_", "-")
        if args.model and getattr(args, name) is not None:
            parser.error(f"--model and {flag}: give one ({flag} shapes the random Llama built "
                         "here; --model names a real model)")
        if getattr(args, name) is None and not args.model:
            setattr(args, name, default)


def hf_model_dir(path: str) -> Path:
    """``--model``'s PATH as a Hugging Face directory both sides load (TRL cannot be handed
    preflab's GGUF reader): a directory with a ``config.json`` as it is; a .gguf (or a
    directory holding one) dequantized to float32 by ``preflab.models`` and saved, once per
    file name, size and mtime, under ``model_cache()``. The conversion runs in a child
    process, so this one's peak RSS, a floor under every worker's (``count_parameters``), stays
    small."""
    source = Path(path).expanduser()
    if source.is_dir() and (source / "config.json").is_file():
        return source
    ggufs = sorted(source.glob("*.gguf")) if source.is_dir() else [source]
    if len(ggufs) != 1 or ggufs[0].suffix != ".gguf" or not ggufs[0].is_file():
        sys.exit(f"--model {path}: expected a Hugging Face model directory (with config.json) "
                 "or a .gguf file")
    source, stat = ggufs[0], ggufs[0].stat()
    target = model_cache() / f"{source.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    if not (target / "config.json").is_file():
        print(f"converting {source} to a Hugging Face directory (float32), once: {target}",
              flush=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "preflab.compare.data", "convert",
                               "--model", str(source), "--out", str(target)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"converting {source} failed:\n{proc.stderr[-3000:]}")
    return target


def count_parameters(model_dir: str | Path) -> int:
    """The causal LM's parameters, counted on the meta device. Loading the weights here would
    raise this process's RSS, and every worker started from it would report at least that as
    its peak (Linux's ``ru_maxrss`` of a child starts from the parent's pages it held at fork)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def describe_model(model: str | None, model_dir: str | Path) -> str:
    """``Llama, 20.3M parameters`` for the random Llama; the file's name and its architecture
    for ``--model``."""
    n = f"{count_parameters(model_dir) / 1e6:.1f}M parameters"
    if not model:
        return f"Llama, {n}"
    config = json.loads(Path(model_dir, "config.json").read_text())
    return f"{Path(model).name} ({config.get('model_type', '?')}), {n}"


@dataclass(frozen=True)
class Words:
    """What the benchmarks' text is drawn from: words that are one token each, so that a
    record's length in tokens is the number of words drawn, plus ``prompt_specials`` on a
    prompt and the EOS on a completion."""

    words: list[str]
    lead: str = ""
    """Put before a prompt's first word: " " for a real tokenizer (its words are one token
    with their leading space, as completions' are), "" for the word tokenizer."""
    prompt_specials: int = 0
    """Tokens the tokenizer adds to a prompt (a BOS), which the data layer tokenizes with
    ``add_special_tokens=True``."""

    @classmethod
    def numbered(cls, n: int) -> Words:
        """``w0`` .. ``w{n-1}``: the vocabulary of the random Llama's word tokenizer."""
        return cls([f"w{i}" for i in range(n)])

    @classmethod
    def of_model(cls, model_dir: str | Path, limit: int = 8000) -> Words:
        """Up to ``limit`` ASCII words (lowest ids first) that ``model_dir``'s tokenizer reads
        as exactly one token after a space: vocabulary entries of a space marker (byte-level
        ``Ġ``, SentencePiece ``▁``) and letters, each checked by tokenizing it."""
        from preflab.models import load_tokenizer

        tokenizer = load_tokenizer(str(model_dir))
        found = []
        for entry, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
            word = entry[1:]
            if entry[:1] not in ("Ġ", "▁") or not (word.isascii() and word.isalpha()):
                continue
            if tokenizer(" " + word, add_special_tokens=False)["input_ids"] == [i]:
                found.append(word)
                if len(found) == limit:
                    break
        if len(found) < 100:
            sys.exit(f"--model {model_dir}: only {len(found)} words are one token of its "
                     "tokenizer; the benchmarks need a few thousand")
        return cls(found, " ", len(tokenizer("")["input_ids"]))

    def prompt(self, rng: random.Random, k: int) -> str:
        return self.lead + " ".join(rng.choices(self.words, k=k))

    def completion(self, rng: random.Random, k: int) -> str:
        return " " + " ".join(rng.choices(self.words, k=k))


def model_and_words(work: Path, model: str | None, *, vocab: int = 8000,
                    max_positions: int = 512, **shape) -> tuple[Path, Words]:
    """``model``'s directory (``hf_model_dir``) and words that are one token each of its
    tokenizer; without ``model``, a random Llama of ``shape`` (``save_tiny_model``'s keywords)
    with a word tokenizer of ``vocab`` words, saved to ``work/model``, and those words.
    ``work`` is made where missing (the data goes there)."""
    work.mkdir(parents=True, exist_ok=True)
    if model:
        model_dir = hf_model_dir(model)
        return model_dir, Words.of_model(model_dir)
    from preflab.models.tiny import save_tiny_model

    words = Words.numbered(vocab)
    return Path(save_tiny_model(work / "model", words.words, arch="llama",
                                max_positions=max_positions, **shape)), words


def check_token_counts(model_dir: str | Path, records: Sequence[dict],
                       counts: Sequence[dict[str, int]], n: int = 5) -> None:
    """Exit unless the first ``n`` records have the token counts the script drew for them
    (``counts[i][field]``), tokenized as preflab's data layer does it: a prompt with
    ``add_special_tokens=True``, a completion without, plus EOS."""
    from preflab.models import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    for record, expected in list(zip(records, counts))[:n]:
        for field, count in expected.items():
            if field == "prompt":
                got = len(tokenizer(record[field])["input_ids"])
            else:
                got = len(tokenizer(record[field], add_special_tokens=False)["input_ids"]) + 1
            if got != count:
                sys.exit(f"{model_dir}: a {field} of {count} tokens as drawn is {got} tokens "
                         f"when tokenized: {record[field][:80]!r}")


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
