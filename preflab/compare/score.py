"""Scoring one policy for ``preflab compare``: every compared run is measured by this one job.

    python -m preflab.compare.score --policy RUN/final --reference SFT --prompts P --out F.json
        [--world W] [--reward NAME=SPEC ...] [--pairs HELD_OUT] [--samples 4]

It samples ``--samples`` completions for each of the first ``--num-prompts`` prompts with
``preflab.evaluation.evaluate_policy`` (the evaluation every trainer uses), with the world's
objectives (``--world``: gold reward, harmlessness, grammaticality) and any ``--reward``
(``gold_reward=module:function``, ``judge_reward=RM_DIR``), ``eval/kl`` to ``--reference``,
and, given ``--pairs``, the held-out preference accuracy of the policy's implicit reward.
With ``--best-of N --proxy SPEC`` it scores best-of-N sampling from ``--policy`` instead: each
scored sample is the proxy's favourite of N, and ``eval/kl`` is the bound log N - (N-1)/N
(``preflab.evaluation``). Writes the figures, each reward's mean per prompt (``per_prompt``) and the first
``--keep-samples`` prompts' completions to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from preflab.errors import ConfigError, PreflabError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m preflab.compare.score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="model directory to score")
    p.add_argument("--reference", required=True, help="model for eval/kl (the SFT checkpoint)")
    p.add_argument("--prompts", required=True, help="held-out prompts file")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--world", default=None, help="world directory: add its objectives")
    p.add_argument("--reward", action="append", default=[], metavar="NAME=SPEC",
                   help="a named reward (module:function, file.py:function or a reward-model "
                        "directory); repeatable")
    p.add_argument("--best-of", type=int, default=1, metavar="N",
                   help="score best-of-N sampling from --policy, picked by --proxy")
    p.add_argument("--proxy", default=None, metavar="SPEC",
                   help="the reward that picks the best of N (a reward-model directory, ...)")
    p.add_argument("--pairs", default=None, help="held-out preference pairs for "
                   "eval/preference_accuracy")
    p.add_argument("--num-prompts", type=int, default=128)
    p.add_argument("--samples", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=512, help="for the held-out pairs")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--keep-samples", type=int, default=8, help="prompts whose completions "
                   "are kept in the output")
    p.add_argument("--device", default="auto")
    return p


def score(args) -> dict:
    from preflab import models, rewards
    from preflab.data.chat import model_prompts, read_prompts
    from preflab.evaluation import evaluate_policy, preference_accuracy
    from preflab.world.tasks import world_rewards

    started = time.perf_counter()
    device = models.resolve_device(args.device)
    dtype = models.resolve_dtype("auto", device)
    tokenizer = models.load_tokenizer(args.policy)
    policy = models.load_causal_lm(args.policy, dtype=dtype, device=device)
    # best-of-n has no sampled KL (its eval/kl is the bound) and no implicit reward: no reference
    reference = (models.load_causal_lm(args.reference, dtype=dtype, device=device)
                 if args.best_of == 1 else None)
    named = {}
    if args.world:
        from preflab.world import load_world

        named.update(world_rewards(load_world(args.world)))
    for item in args.reward:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise ConfigError(f"--reward {item!r}", expected="NAME=SPEC")
        combined = rewards.load_reward(spec, flag="--reward", device=device, dtype=dtype)
        named[name] = lambda p, c, _r=combined, **kw: _r(p, c, **kw)[0]
    proxy = None
    if args.best_of < 1:
        raise ConfigError(f"--best-of {args.best_of}", field="best_of", expected="N >= 1")
    if args.best_of > 1:
        if not args.proxy:
            raise ConfigError("--best-of needs --proxy", field="proxy")
        proxy_reward = rewards.load_reward(args.proxy, flag="--proxy", device=device, dtype=dtype)
        proxy = lambda p, c, **kw: proxy_reward(p, c, **kw)[0]  # noqa: E731
    # text or chat prompts, rendered as every trainer renders them (preflab.data.chat)
    prompts = model_prompts(tokenizer, read_prompts(args.prompts, args.num_prompts,
                                                    allow_empty=True))
    evaluation = evaluate_policy(
        policy, tokenizer, prompts, rewards=named,
        reference=(lambda fn: fn(reference)) if reference is not None else None,
        num_samples=args.samples, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, batch_size=args.batch_size, seed=args.seed,
        vocab_size=len(tokenizer), best_of=args.best_of, proxy=proxy)
    metrics = dict(evaluation.metrics)
    if args.pairs and args.best_of == 1:  # best-of-n has no implicit reward
        from preflab.data import TruncationPolicy, load_preference_dataset

        examples, _ = load_preference_dataset(args.pairs, tokenizer,
                                              TruncationPolicy(args.max_length, None, "skip"))
        metrics.update(preference_accuracy(policy, reference, examples,
                                           pad_token_id=tokenizer.pad_token_id))
    k = args.samples
    samples = []
    for i, group in enumerate(evaluation.groups[: args.keep_samples]):
        samples.append({"prompt": group[0].prompt,
                        "completions": [s.completion for s in group],
                        "scores": {name: [round(v, 4) for v in values[i * k : (i + 1) * k]]
                                   for name, values in evaluation.scores.items()}})
    # each prompt's mean over its samples: the unit the report's intervals resample
    per_prompt = {name: [round(sum(values[i * k : (i + 1) * k]) / k, 5)
                         for i in range(len(values) // k)]
                  for name, values in evaluation.scores.items()} if k else {}
    return {"policy": args.policy, "reference": args.reference, "prompts": len(prompts),
            "samples_per_prompt": k, "best_of": args.best_of, "proxy": args.proxy,
            "seed": args.seed, "metrics": metrics, "per_prompt": per_prompt,
            "examples": samples, "wall_s": round(time.perf_counter() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    from preflab.runtime.exits import quiet_libraries

    quiet_libraries()
    args = _parser().parse_args(argv)
    try:
        result = score(args)
    except PreflabError as exc:
        print(f"preflab compare score: error: {exc}", file=sys.stderr)
        return exc.exit_code
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    m = result["metrics"]
    shown = {k: round(v, 4) for k, v in m.items() if k in (
        "eval/gold_reward", "eval/judge_reward", "eval/kl", "eval/preference_accuracy")}
    print(f"scored {args.policy}: {shown} -> {out}")
    return 0


if __name__ == "__main__":
    from preflab.runtime.exits import run_module

    sys.exit(run_module(main))
