"""Best-of-n: sample n completions, keep the one a reward model likes best.

    preflab bon --model SFT --prompts P --reward RM --gold-reward GOLD --n 1,2,4,8,16 \\
        --output-dir OUT

Best-of-n is the simplest use of a reward model: no training at all. It is also the yardstick
for what a reward model can buy and where it starts to be gamed (Gao et al. 2023). For each
prompt the command samples N = max(--n) completions from the model and scores each with the
proxy reward (``--reward``) and, when given, the gold reward (``--gold-reward``). For each n
it then reports the expected proxy and gold reward of the best of n, by proxy.

The expectation uses all N samples, not only the first n. Rank a prompt's samples by proxy,
lowest first (ties in sample order). The chance that the i-th is the best of a random n-subset
is C(i-1, n-1) / C(N, n). Weighting each sample's rewards by it gives an unbiased estimate
with less variance than picking from the first n (Nakano et al. 2021).

The KL of best-of-n from the model is at most log n - (n-1)/n nats (Stiennon et al. 2020;
Beirami et al. 2024 show the bound is tight only when the n samples are distinct), reported
as ``kl_bound``.

Writes ``samples.jsonl`` (every completion with its rewards), ``results.json``, ``report.md``
and ``bon.png`` (gold and proxy against the KL bound) to ``--output-dir``, and, as every
trainer does, ``metrics.jsonl`` (one evaluation row per n: ``eval/proxy_reward``,
``eval/gold_reward``, ``eval/kl`` = the bound) and ``summary.json`` (wall time, peak RSS,
bytes per role), which is how ``preflab compare`` reads a best-of-n run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from preflab.config import (
    arg,
    check_paths,
    check_source_config,
    config_arg,
    parse_config,
    split_arg,
)
from preflab.errors import ConfigError
from preflab.metrics.best_of_n import expected_best, kl_bound

MADE_BY_BON = ("samples.jsonl", "results.json", "report.md", "bon.png", "metrics.jsonl",
               "summary.json")


@dataclass
class BonConfig:
    """``preflab bon``: best-of-n sampling with a reward model or function."""

    model: str = arg("", "The model to sample from (a local directory, a .gguf file or a hub "
                     "id).",
                      path="model")
    prompts: str = arg("", "Prompts: any data file with a prompt (JSONL, JSON, CSV, Parquet), "
                       "a directory of them, or a hub dataset name.", path="data")
    prompts_split: str = split_arg("--prompts", "test_gen")
    prompts_config: str = config_arg("--prompts")
    reward: str = arg("", "The proxy reward that picks the best: a reward-model directory, "
                      "module:function or file.py:function, or a weighted sum 'a:0.7,b:0.3'. A "
                      "function runs as Python code with your rights: see docs/security.md.")
    gold_reward: str = arg("", "A reward to judge the picked completions by (same forms); "
                           "empty: proxy only.")
    output_dir: str = arg("", "Where samples.jsonl, results.json, report.md and bon.png go.",
                          path="output")
    n: str = arg("1,2,4,8,16", "The values of n, comma-separated; max(n) completions are "
                 "sampled per prompt.")
    num_prompts: int = arg(64, "How many prompts (the first ones of --prompts).", ge=1)
    max_new_tokens: int = arg(48, "Longest completion.", ge=1)
    temperature: float = arg(1.0, "Sampling temperature.", gt=0)
    batch_size: int = arg(32, "Prompts per generate() call.", ge=1)
    max_length: int = arg(512, "Longest prompt in tokens (longer prompts keep their end).", ge=2)
    seed: int = arg(0, "Random seed for sampling.", ge=0, le=2**32 - 1)
    device: str = arg("auto", "Device: auto, cpu, cuda, cuda:N, mps.")
    dtype: str = arg("auto", "Model dtype.", choices=("auto", "float32", "bfloat16", "float16"))
    overwrite: bool = arg(False, "Replace the results of an earlier run in --output-dir.")
    progress: bool = arg(True, "Show a progress bar while sampling.")
    allow_pickle: bool = arg(False, "Allow pickle weight files (they can run code).")
    trust_remote_code: bool = arg(False, "Run model code shipped with a hub model.")

    def values_of_n(self) -> list[int]:
        try:
            values = sorted({int(x) for x in self.n.split(",") if x.strip()})
        except ValueError:
            values = []
        if not values or values[0] < 1 or values[-1] > 4096:
            raise ConfigError(f"--n {self.n[:80]!r}: expected positive integers up to 4096, "
                              "comma-separated", field="n", expected="e.g. 1,2,4,8,16")
        return values

    def validate(self) -> None:
        for name in ("model", "prompts", "reward", "output_dir"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} is required", field=name)
        self.values_of_n()
        from preflab.rewards import check_reward_specs

        check_reward_specs(self.reward, flag="--reward")
        if self.gold_reward:
            check_reward_specs(self.gold_reward, flag="--gold-reward")
        check_source_config(self, "prompts", "prompts_config")


def prepare_output(cfg: BonConfig) -> Path:
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError("--output-dir exists and is a file", path=cfg.output_dir)
    present = [p.name for p in out.iterdir()] if out.is_dir() else []
    ours = [name for name in present if name in MADE_BY_BON]
    if ours and not cfg.overwrite:
        raise ConfigError("the output directory holds an earlier best-of-n run; pass "
                          "--overwrite to replace it, or choose another --output-dir",
                          path=cfg.output_dir)
    if [name for name in present if name not in MADE_BY_BON and not name.startswith(".")]:
        raise ConfigError("the output directory holds other files; choose a new or empty one",
                          path=cfg.output_dir)
    return out


def run(cfg: BonConfig) -> dict:
    from preflab import models
    from preflab.data import TruncationPolicy, check_dataset, load_prompt_dataset, write_jsonl
    from preflab.data.writers import write_text
    from preflab.generation import generate
    from preflab.rewards import load_reward
    from preflab.runtime import memory

    started = time.perf_counter()
    values = cfg.values_of_n()
    check_paths(cfg, network=False)
    source = {"split": cfg.prompts_split, "config": cfg.prompts_config}
    check_dataset(cfg.prompts, "prompt", **source, split_flag="--prompts-split")
    out = prepare_output(cfg)
    device = models.resolve_device(cfg.device)
    dtype = models.resolve_dtype(cfg.dtype, device)
    tokenizer = models.load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    examples, _ = load_prompt_dataset(cfg.prompts, tokenizer,
                                      TruncationPolicy(cfg.max_length, None, "skip"), **source)
    prompts = [e.prompt for e in examples[: cfg.num_prompts]]
    reward = load_reward(cfg.reward, flag="--reward", device=device, dtype=dtype,
                         allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    gold = (load_reward(cfg.gold_reward, flag="--gold-reward", device=device, dtype=dtype,
                        allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
            if cfg.gold_reward else None)
    model = models.load_causal_lm(cfg.model, dtype=dtype, device=device,
                                  allow_pickle=cfg.allow_pickle,
                                  trust_remote_code=cfg.trust_remote_code)
    big_n = values[-1]
    print(f"bon: {len(prompts)} prompts x {big_n} samples from {cfg.model}", flush=True)
    samples = generate(model, tokenizer, prompts, num_samples=big_n,
                       max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                       batch_size=cfg.batch_size, seed=cfg.seed, progress=cfg.progress)
    flat_prompts = [p for p, group in zip(prompts, samples) for _ in group]
    flat = [s.completion for group in samples for s in group]
    ended = [s.ended_with_eos for group in samples for s in group]
    proxy, parts = reward(flat_prompts, flat, ended_with_eos=ended)
    gold_scores = gold(flat_prompts, flat, ended_with_eos=ended)[0] if gold is not None else None
    for name, scores in [("proxy", proxy), *([("gold", gold_scores)] if gold_scores else [])]:
        bad = [x for x in scores if not math.isfinite(x)]
        if bad:
            raise ConfigError(f"the {name} reward returned {bad[0]} for some completions",
                              expected="finite scores")

    records, by_n = [], {n: {"proxy": 0.0, "gold": 0.0} for n in values}
    for k, prompt in enumerate(prompts):
        rows = slice(k * big_n, (k + 1) * big_n)
        p = proxy[rows]
        others = {"gold": gold_scores[rows]} if gold_scores else {}
        for n in values:
            for name, value in expected_best(p, others, n).items():
                by_n[n][name] += value / len(prompts)
        records.append({"prompt": prompt, "completions": flat[rows], "proxy": p,
                        **({"gold": gold_scores[rows]} if gold_scores else {}),
                        **{f"proxy/{name}": v[rows] for name, v in parts.items()
                           if len(parts) > 1}})
    table = [{"n": n, "kl_bound": kl_bound(n), "proxy": by_n[n]["proxy"],
              **({"gold": by_n[n]["gold"]} if gold_scores else {})} for n in values]
    results = {"command": "bon", "config": asdict(cfg), "prompts": len(prompts),
               "samples_per_prompt": big_n, "rows": table}
    write_jsonl(out / "samples.jsonl", records)
    write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_text(out / "report.md", report(results))
    plot(results, out / "bon.png")
    evals = [{"step": row["n"], "eval/proxy_reward": row["proxy"], "eval/kl": row["kl_bound"],
              **({"eval/gold_reward": row["gold"]} if "gold" in row else {})} for row in table]
    write_jsonl(out / "metrics.jsonl", evals)
    seen: set[int] = set()
    roles = {"policy": memory.role_tensor_bytes(model, seen=seen)}
    held = [memory.role_tensor_bytes(m, seen=seen) for m in reward.models()]
    if held:
        roles["reward"] = {k: sum(r[k] for r in held) for k in held[0]}
    summary = {"command": "bon", "steps": 0, "samples": len(flat),
               "wall_s": round(time.perf_counter() - started, 3),
               **memory.memory_summary(roles), "final_metrics": evals[-1]}
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")  # last: the marker
    return results


def report(results: dict) -> str:
    gold = "gold" in results["rows"][0]
    lines = [f"# Best-of-n: {results['config']['model']}", "",
             f"{results['prompts']} prompts, {results['samples_per_prompt']} samples each; the "
             f"best by `{results['config']['reward']}`"
             + (f", judged by `{results['config']['gold_reward']}`." if gold else "."), "",
             "| n | KL bound (nats) | proxy | " + ("gold |" if gold else ""),
             "|---|---|---|" + ("---|" if gold else "")]
    for row in results["rows"]:
        lines.append(f"| {row['n']} | {row['kl_bound']:.3f} | {row['proxy']:.4f} | "
                     + (f"{row['gold']:.4f} |" if gold else ""))
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    kl = [r["kl_bound"] for r in rows]
    ax.plot(kl, [r["proxy"] for r in rows], "o-", label="proxy (picks the best)")
    if "gold" in rows[0]:
        ax.plot(kl, [r["gold"] for r in rows], "s-", label="gold")
    for r in rows:
        ax.annotate(f"n={r['n']}", (r["kl_bound"], r["proxy"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("KL bound log n - (n-1)/n (nats)")
    ax.set_ylabel("mean reward of the best of n")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(BonConfig, argv, prog="preflab bon", description=__doc__)
    results = run(cfg)
    for row in results["rows"]:
        gold = f", gold {row['gold']:.4f}" if "gold" in row else ""
        print(f"n={row['n']:<5} KL <= {row['kl_bound']:.3f}  proxy {row['proxy']:.4f}{gold}")
    print(f"results in {Path(cfg.output_dir) / 'report.md'}", file=sys.stderr)
    return 0
