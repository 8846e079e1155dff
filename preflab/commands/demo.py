"""``preflab demo``: the whole story on the built-in world, offline, in minutes.

    world   -> OUT/world              a synthetic review task with a hidden gold reward
    sft     -> OUT/runs/sft           the world's small random model taught to write reviews
    pairs   -> OUT/data/pairs.jsonl   4 samples per prompt from the SFT model, every pair
                                      labelled by simulated annotators
    direct  -> OUT/runs/dpo-s0, ipo-s0                  DPO and IPO from the SFT model
    RLHF    -> OUT/runs/rm-s0 -> ppo-s0                 reward model, then PPO (4 models)
               OUT/runs/rm-lora-s0 -> ppo-shared-s0     the same with one shared base
    scores  -> OUT/scores/            every policy sampled on held-out prompts and measured
                                      against the gold reward that no model ever saw
    report  -> OUT/report.html, report.md, results.json, figures/

It is ``preflab compare --world OUT/world --output-dir OUT --preset quick``: the table, the
figures and the recommendation come from the compare code, not a second scoring path. Runs
already finished are reused (with the timings they had), so an interrupted demo continues
where it stopped; ``--fresh`` starts again from nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from preflab.errors import ConfigError

# What the demo of preflab 0.1 wrote; --fresh clears it too.
OLD_DEMO = ("world", "sft", "dpo", "pairs.jsonl", "pairs_unpaired.jsonl", "scores.json",
            "report.md")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preflab demo", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="demo",
                        help="where everything goes (default: %(default)s)")
    parser.add_argument("--preset", default="quick", choices=("quick", "standard", "full"),
                        help="how much to run (default: %(default)s; see preflab compare "
                             "--help)")
    parser.add_argument("--jobs", type=int, default=0,
                        help="runs at a time, each with its share of the CPU cores; 0: one "
                             "per core up to 4, one on a GPU machine (default: %(default)s)")
    parser.add_argument("--config", default=None, metavar="FILE.yaml",
                        help="settings for preflab compare (e.g. hyperparameters per stage)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete what an earlier demo wrote in --output-dir and start again")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide the live progress line")
    return parser


def main(argv: list[str] | None = None) -> int:
    from preflab.compare import run as compare
    from preflab.compare.settings import CompareConfig
    from preflab.config import parse_config

    args = _parser().parse_args(argv)
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError("--output-dir exists and is a file", path=str(out))
    if args.fresh:  # the demo's own world and an older demo's files go too
        compare.remove_paths(out, OLD_DEMO)
    elif (any((out / name).exists() for name in ("sft", "dpo", "scores.json"))
          and not (out / "design.json").exists()):
        raise ConfigError("the directory holds an older preflab demo; pass --fresh to replace "
                          "it, or choose another --output-dir", path=str(out))
    compare_args = ["--world", str(out / "world"), "--output-dir", str(out), "--preset",
                    args.preset, "--jobs", str(args.jobs)]
    if args.config:
        compare_args += ["--config", args.config]
    if args.fresh:
        compare_args.append("--fresh")
    if not args.progress:
        compare_args.append("--no-progress")
    return compare.run_and_print(parse_config(CompareConfig, compare_args, prog="preflab compare"))
