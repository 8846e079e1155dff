"""``preflab world build | pairs | score``: make the built-in world, label pairs, score a policy.

The library functions behind the commands are ``build_world`` (``preflab.world.build``),
``make_pairs``, ``relabel_pairs`` and ``score_policy`` (``preflab.world.tasks``). ``main(argv)`` parses flags and calls them; errors in what the
user gave are ``PreflabError``s, which the top-level ``preflab`` command prints as one
paragraph (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from preflab.errors import ConfigError
from preflab.world import load_world
from preflab.world.tasks import (
    make_pairs,
    relabel_pairs,
    score_policy,
)


# ------------------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="preflab world", formatter_class=fmt,
                                     description="The built-in reviews world: a task with a "
                                     "hidden gold reward and simulated annotators.")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{build,pairs,relabel,score}")

    b = sub.add_parser("build", formatter_class=fmt, help="write a world directory",
                       description="Write model/, sft.jsonl, prompts_train.jsonl, "
                       "prompts_eval.jsonl and world.json.")
    b.add_argument("--out", default="world", help="directory to write (new or empty)")
    b.add_argument("--seed", type=int, default=0, help="seed of the corpus and the weights")
    b.add_argument("--num-reviews", type=int, default=20000, help="reviews in sft.jsonl")
    b.add_argument("--num-prompts-train", type=int, default=2000,
                   help="distinct prompts in prompts_train.jsonl")
    b.add_argument("--num-prompts-eval", type=int, default=256,
                   help="distinct held-out prompts in prompts_eval.jsonl")
    b.add_argument("--hidden-size", type=int, default=128, help="model width")
    b.add_argument("--num-layers", type=int, default=4, help="decoder layers")
    b.add_argument("--num-heads", type=int, default=4, help="attention heads")
    b.add_argument("--max-positions", type=int, default=128, help="longest sequence")
    b.add_argument("--temperature", type=float, default=None,
                   help="default annotator temperature written to world.json "
                   "(None: the built-in default, 0.12)")
    b.add_argument("--flip-rate", type=float, default=0.0,
                   help="default annotator label-flip rate")
    b.add_argument("--length-bias", type=float, default=0.0,
                   help="default annotator length bias (reward per word)")
    b.add_argument("--overwrite", action="store_true",
                   help="replace the world files in a non-empty --out")

    def sampling_flags(p, default_prompts: str) -> None:
        p.add_argument("--policy", required=True, help="model directory to sample from")
        p.add_argument("--world", default="world", help="world directory (has world.json)")
        p.add_argument("--prompts", default=None,
                       help=f"prompt file (None: the world's {default_prompts})")
        p.add_argument("--max-prompts", type=int, default=None,
                       help="use only the first N prompts (None: all)")
        p.add_argument("--max-new-tokens", type=int, default=48, help="longest completion")
        p.add_argument("--sampling-temperature", type=float, default=1.0,
                       help="policy sampling temperature (0 = greedy)")
        p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
        p.add_argument("--batch-size", type=int, default=32, help="prompts per generate call")
        p.add_argument("--seed", type=int, default=0, help="sampling and labelling seed")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ...")

    pr = sub.add_parser("pairs", formatter_class=fmt, help="sample and label preference pairs",
                        description="Sample K completions per prompt and label the K(K-1)/2 "
                        "pairs with a simulated annotator; also write unpaired KTO labels.")
    sampling_flags(pr, "prompts_train.jsonl")
    pr.add_argument("--out", required=True, help="pairs file (.jsonl); the unpaired file is "
                    "written next to it as <stem>_unpaired.jsonl")
    pr.add_argument("--samples-per-prompt", type=int, default=4, help="K samples per prompt")
    pr.add_argument("--temperature", type=float, default=None,
                    help="annotator Bradley-Terry temperature, 0 = deterministic "
                    "(None: the world's default)")
    pr.add_argument("--flip-rate", type=float, default=None,
                    help="annotator label-flip probability (None: the world's default)")
    pr.add_argument("--length-bias", type=float, default=None,
                    help="annotator preference per extra word (None: the world's default)")
    pr.add_argument("--overwrite", action="store_true", help="replace existing output files")

    rl = sub.add_parser("relabel", formatter_class=fmt,
                        help="label pairs again under a changed objective",
                        description="Label the same pairs again, with annotators who now "
                        "prefer gold reward + W x harmlessness (the objective changed after "
                        "deployment).")
    rl.add_argument("--pairs", required=True, help="pairs file from `world pairs`")
    rl.add_argument("--world", default="world", help="world directory (has world.json)")
    rl.add_argument("--out", required=True, help="relabelled pairs file (.jsonl)")
    rl.add_argument("--harmlessness-weight", type=float, default=1.0,
                    help="weight W of harmlessness in the new objective")
    rl.add_argument("--temperature", type=float, default=None,
                    help="annotator temperature (None: the world's default)")
    rl.add_argument("--flip-rate", type=float, default=None,
                    help="annotator label-flip probability (None: the world's default)")
    rl.add_argument("--seed", type=int, default=0, help="labelling seed")
    rl.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    sc = sub.add_parser("score", formatter_class=fmt, help="measure a policy on the gold reward",
                        description="Sample and report gold reward, harmlessness, "
                        "grammaticality, length, EOS rate, diversity and (with --reference) "
                        "KL.")
    sampling_flags(sc, "prompts_eval.jsonl")
    sc.add_argument("--samples", type=int, default=4, help="samples per prompt")
    sc.add_argument("--json", default=None, help="also write the figures to this JSON file")
    sc.add_argument("--reference", default=None,
                    help="model to measure eval/kl against (e.g. the SFT model; None: no KL)")
    return parser


def _run_build(args) -> int:
    from preflab.world.build import build_world

    kwargs = {} if args.temperature is None else {"temperature": args.temperature}
    out = build_world(args.out, seed=args.seed, num_reviews=args.num_reviews,
                      num_prompts_train=args.num_prompts_train,
                      num_prompts_eval=args.num_prompts_eval, hidden_size=args.hidden_size,
                      num_layers=args.num_layers, num_heads=args.num_heads,
                      max_positions=args.max_positions, flip_rate=args.flip_rate,
                      length_bias=args.length_bias, overwrite=args.overwrite,
                      progress=sys.stderr.isatty(), **kwargs)
    world = load_world(out)
    corpus, model = world.meta["corpus"], world.meta["model"]
    print(f"wrote world to {out}/")
    for name in world.meta["files"].values():
        print(f"  {name}")
    print("  world.json")
    print(f"model: llama, {model['parameters']:,} parameters, vocabulary {model['vocab_size']}")
    print(f"corpus: {corpus['reviews']} reviews, gold reward {corpus['gold_mean']:.3f} "
          f"+- {corpus['gold_std']:.3f}, harmlessness {corpus['harmlessness_mean']:.3f}")
    print(f"next: preflab sft --config {out}/sft.yaml --model {out}/model "
          f"--data {out}/sft.jsonl --output-dir runs/sft")
    return 0


def _run_pairs(args) -> int:
    stats = make_pairs(args.policy, args.world, args.out, prompts=args.prompts,
                       samples_per_prompt=args.samples_per_prompt,
                       temperature=args.temperature, flip_rate=args.flip_rate,
                       length_bias=args.length_bias, seed=args.seed,
                       max_prompts=args.max_prompts, max_new_tokens=args.max_new_tokens,
                       sampling_temperature=args.sampling_temperature, top_p=args.top_p,
                       batch_size=args.batch_size, device=args.device,
                       overwrite=args.overwrite, progress=sys.stderr.isatty())
    rate = stats["agreement"]
    print(f"{stats['pairs']} pairs from {stats['prompts']} prompts x "
          f"{args.samples_per_prompt} samples -> {stats['files']['pairs']}")
    print(f"  skipped {stats['skipped_identical']} pairs of identical completions; "
          f"{stats['gold_ties']} gold ties (excluded from agreement)")
    print("  agreement with gold: " + ("n/a" if rate is None else
          f"{rate:.1%} ({stats['agreed']}/{stats['decided']})"))
    print(f"{stats['unpaired']} unpaired labels ({stats['desirable']} desirable) -> "
          f"{stats['files']['unpaired']}; agreement with gold {stats['unpaired_agreement']:.1%}")
    print(f"  mean gold reward of the samples: {stats['mean_gold']:.3f}")
    return 0


def _run_relabel(args) -> int:
    stats = relabel_pairs(args.pairs, args.world, args.out,
                          harmlessness_weight=args.harmlessness_weight,
                          temperature=args.temperature, flip_rate=args.flip_rate, seed=args.seed,
                          overwrite=args.overwrite)
    print(f"{stats['pairs']} pairs labelled again for gold + {args.harmlessness_weight:g} x "
          f"harmlessness -> {stats['file']}; {stats['changed_side']} changed side")
    return 0


def _run_score(args) -> int:
    evaluation = score_policy(args.policy, args.world, prompts=args.prompts,
                              samples_per_prompt=args.samples, max_prompts=args.max_prompts,
                              max_new_tokens=args.max_new_tokens,
                              temperature=args.sampling_temperature, top_p=args.top_p,
                              batch_size=args.batch_size, seed=args.seed, device=args.device,
                              reference=args.reference, progress=sys.stderr.isatty())
    result = {**evaluation.metrics, "prompts": len(evaluation.groups),
              "samples": sum(len(g) for g in evaluation.groups)}
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else
              f"{key:<{width}}  {value}")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name in ("samples_per_prompt", "samples", "max_prompts", "batch_size", "max_new_tokens"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError("must be a positive integer", field="--" + name.replace("_", "-"),
                              expected="an integer >= 1")
    return {"build": _run_build, "pairs": _run_pairs, "relabel": _run_relabel,
            "score": _run_score}[args.command](args)


if __name__ == "__main__":
    from preflab.runtime.exits import run_module

    sys.exit(run_module(main))
