"""``preflab sample``: K completions for each prompt from a policy, for a judge to label.

    preflab sample --model runs/sft/final --prompts prompts.jsonl --n 4 --out samples.jsonl

The samples file holds one JSON record per prompt, in the prompt file's order::

    {"prompt": "...", "completions": ["...", "...", "...", "..."]}
    {"prompt": [{"role": "user", "content": "..."}], "prompt_text": "<rendered>",
     "completions": ["...", "...", "...", "..."]}

``prompt`` is the prompt as the prompt file gives it: a text, or a list of messages (a chat
prompt). A chat prompt is rendered with the sampled model's chat template, generation
prompt on (``preflab.data.chat.tokenize_prompt``, the rendering every trainer uses), and
the model samples from exactly the ids the trainers' data loaders make of it; its record
also holds ``prompt_text``, that rendered text, which ``preflab label`` gives the judge
(as PPO gives its reward functions). Keeping the messages lets ``preflab label`` write
conversational pairs, which train on the same prompt ids. Text and chat prompts may be
mixed in one file; each is tokenized by its own rule.

Completions come from ``preflab.generation.generate`` (the model's own generation_config is
set aside: the temperature, nucleus and length are the flags', and nothing else), and read
as the text the completion adds to the prompt (``prompt + completion`` is one text). A
completion may be empty (EOS at once) or repeat another; the file keeps every sample, and
``preflab label`` skips those when it makes pairs.

Prompts are the ``prompt`` field of each record of any data file preflab reads
(prompt-only, preference, prompt-completion records ...): a non-empty text, or a list of
messages ending with a user message; a ``messages`` record gives the messages before its
last assistant reply (``preflab.data.chat.read_prompts``). A model whose tokenizer has no
chat template cannot sample chat prompts: that is one error, naming the first one's file,
line and field, before the model loads. Sampling runs in chunks of about
``--batch-size`` sequences; chunk ``k`` is seeded from ``--seed`` and ``k``, so the same
model, prompts and flags give the same file. The file is written at the end, at once (a
temp file, then a rename); an existing one is refused without ``--overwrite``. SIGTERM or
Ctrl-C stops between chunks (exit 143 or 130) and writes nothing.
"""

from __future__ import annotations

import hashlib
import signal
import sys
from dataclasses import dataclass

from preflab.config import (
    arg,
    check_new_file,
    check_paths,
    check_source_config,
    config_arg,
    parse_config,
    split_arg,
)
from preflab.data.chat import PromptText, model_prompts, read_prompts
from preflab.errors import ConfigError
from preflab.runtime import signals
from preflab.runtime.progress import progress_bar

SAMPLE_SUFFIXES = (".jsonl", ".ndjson")


@dataclass
class SampleConfig:
    """``preflab sample``: the policy, the prompts, how many completions, where to write."""

    model: str = arg("", "Policy to sample from: a local Hugging Face directory, a .gguf file "
                     "or a hub id.",
                     path="model")
    prompts: str = arg("", "Prompt file (.jsonl, .json, .csv, .parquet) or a directory of them; "
                       "each record's `prompt` (a text or a list of messages) is used, or a "
                       "`messages` record's messages before its last reply; or a hub "
                       "dataset name.", path="data")
    prompts_split: str = split_arg("--prompts", "train_gen")
    prompts_config: str = config_arg("--prompts")
    n: int = arg(4, "Completions per prompt (K).", ge=1, le=10_000)
    out: str = arg("", "Samples file to write (.jsonl): one record {prompt, completions} per "
                   "prompt (and prompt_text, the rendered text, for a chat prompt).")
    max_prompts: int = arg(0, "Use only the first N prompts; 0: all.", ge=0)
    temperature: float = arg(1.0, "Sampling temperature; 0 is greedy (then the K completions "
                             "of a prompt are identical).", ge=0)
    top_p: float = arg(1.0, "Nucleus sampling: keep the most probable tokens up to this mass.",
                       gt=0, le=1)
    max_new_tokens: int = arg(48, "Longest completion, in tokens.", ge=1)
    batch_size: int = arg(32, "Sequences per generate call.", ge=1)
    seed: int = arg(0, "Sampling seed.", ge=0, le=2**32 - 1)
    device: str = arg("auto", "Device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.")
    dtype: str = arg("auto", "Weights dtype; auto = bfloat16 on GPUs that support it, else "
                     "float32.", choices=("auto", "float32", "bfloat16", "float16"))
    overwrite: bool = arg(False, "Replace an existing --out file.")
    progress: bool = arg(True, "Show progress (a bar on a terminal; in a log, a line at every tenth of the work).")
    allow_pickle: bool = arg(False, "Allow loading pickle-based weight files (.bin/.pt); "
                             "they can run code.")
    trust_remote_code: bool = arg(False, "Run model code shipped with a hub model (only for "
                                  "repositories you trust).")

    def validate(self) -> None:
        for name in ("model", "prompts", "out"):
            if not getattr(self, name):
                raise ConfigError(f"--{name} is required", field=name)
        check_new_file(self.out, "out", self.overwrite, suffixes=SAMPLE_SUFFIXES)
        check_source_config(self, "prompts", "prompts_config")


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of chunk ``chunk``: independent streams for every chunk of every seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{chunk}".encode()).digest()[:4], "big")


def samples_record(prompt: PromptText, completions: list[str]) -> dict:
    """A samples file record: the prompt as given, its rendered text when it is a chat
    prompt, and the completions."""
    if isinstance(prompt.source, list):
        return {"prompt": prompt.source, "prompt_text": str(prompt), "completions": completions}
    return {"prompt": str(prompt), "completions": completions}


def sample(cfg: SampleConfig) -> dict:
    """Sample ``cfg.n`` completions per prompt and write ``cfg.out``; return counts."""
    from preflab import generation, models
    from preflab.data.writers import write_jsonl

    sources = read_prompts(cfg.prompts, cfg.max_prompts, split=cfg.prompts_split,
                           config=cfg.prompts_config, split_flag="--prompts-split")
    device = models.resolve_device(cfg.device)
    tokenizer = models.load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    prompts = model_prompts(tokenizer, sources)  # before the model: a missing template fails fast
    model = models.load_causal_lm(cfg.model, dtype=models.resolve_dtype(cfg.dtype, device),
                                  device=device, allow_pickle=cfg.allow_pickle,
                                  trust_remote_code=cfg.trust_remote_code)
    per_chunk = max(1, cfg.batch_size // cfg.n)  # prompts per generate call
    records: list[dict] = []
    bar = progress_bar(total=len(prompts), desc="sample", enabled=cfg.progress, unit="prompts")
    try:
        for k, start in enumerate(range(0, len(prompts), per_chunk)):
            signum = signals.requested_signal()
            if signum is not None:
                raise signals.Interrupted(
                    f"stopped by {signal.Signals(signum).name} after {len(records)} of "
                    f"{len(prompts)} prompts; nothing was written (run the command again)",
                    signum=signum)
            chunk = prompts[start : start + per_chunk]
            groups = generation.generate(model, tokenizer, chunk, num_samples=cfg.n,
                                         max_new_tokens=cfg.max_new_tokens,
                                         temperature=cfg.temperature, top_p=cfg.top_p,
                                         batch_size=cfg.batch_size, seed=chunk_seed(cfg.seed, k))
            records += [samples_record(p, [s.completion for s in group])
                        for p, group in zip(chunk, groups)]
            bar.update(len(chunk))
    finally:
        bar.close()
    write_jsonl(cfg.out, records)
    completions = [c for r in records for c in r["completions"]]
    return {"prompts": len(records), "completions": len(completions),
            "empty": sum(not c.strip() for c in completions),
            "repeated": sum(len(r["completions"]) - len(set(r["completions"])) for r in records),
            "file": cfg.out}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SampleConfig, argv, prog="preflab sample", description=__doc__)
    check_paths(cfg, network=False)
    with signals.graceful_stop():
        stats = sample(cfg)
    print(f"{stats['completions']} completions ({cfg.n} per prompt) for {stats['prompts']} "
          f"prompts -> {stats['file']}; {stats['empty']} empty, {stats['repeated']} repeats "
          "within a prompt (preflab label skips both)")
    return 0


if __name__ == "__main__":
    from preflab.runtime.exits import run_module

    sys.exit(run_module(main))
