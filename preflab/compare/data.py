"""Compare's data steps, each a small command so ``--dry-run`` can hand it to a scheduler:

    python -m preflab.compare.data subset --pairs IN --share 1/16 --out OUT
    python -m preflab.compare.data split --data IN [--data-split S] [--data-config C] \
        --share 0.2 --seed 0 --keep OUT --held-out OUT
    python -m preflab.compare.data convert --model MODEL.gguf --out DIR

``subset`` keeps the pairs of the first ``share`` of the prompts (in file order, every pair of a
kept prompt), so a smaller set is a prefix of a larger one and each has whole prompts.
``split`` holds out ``share`` of the records, grouped by prompt so that no prompt is on both
sides: compare uses it to keep a judge's pairs and the evaluation prompts away from every
compared run; it reads any source the training commands read (a hub dataset's split and
configuration with ``--data-split``/``--data-config``, as theirs). Records are copied as they
are (any fields); files are written atomically.
``convert`` writes a GGUF model once as a Hugging Face directory (dequantized, float32), so
that the compared runs load safetensors in a second instead of each dequantizing the file.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from fractions import Fraction
from pathlib import Path

from preflab.data.writers import write_jsonl
from preflab.errors import ConfigError, DataError, PreflabError


def read_jsonl(path: str | Path, *, split: str | None = None,
               config: str | None = None) -> list[dict]:
    """The records of ``path`` (any source ``read_records`` reads) as dicts."""
    from preflab.data.readers import read_records

    return [record.data for record in read_records(str(path), split=split, config=config,
                                                   split_flag="--data-split")]


def parse_share(text: str) -> Fraction:
    try:
        share = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{text!r} is not a share", field="share",
                          expected="a fraction such as 1/16 or 0.25, in (0, 1]") from None
    if not 0 < share <= 1:
        raise ConfigError(f"{text!r} is not in (0, 1]", field="share", expected="0 < share <= 1")
    return share


def _prompt_key(record: dict) -> str:
    prompt = record.get("prompt", record.get("chosen", ""))
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def _groups(records: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(_prompt_key(record), []).append(record)
    return groups


def subset(records: list[dict], share: Fraction) -> list[dict]:
    """Every record of the first ``ceil(share * prompts)`` prompts, in file order."""
    groups = _groups(records)
    keep = set(list(groups)[: max(1, -(-len(groups) * share.numerator // share.denominator))])
    return [r for r in records if _prompt_key(r) in keep]


def split(records: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """``(kept, held_out)``: about ``share`` of the prompts, drawn with ``seed``, held out."""
    keys = list(_groups(records))
    random.Random(seed).shuffle(keys)
    n_out = max(1, round(len(keys) * share)) if len(keys) > 1 else 0
    held = set(keys[:n_out])
    return ([r for r in records if _prompt_key(r) not in held],
            [r for r in records if _prompt_key(r) in held])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m preflab.compare.data",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("subset", help="the pairs of the first share of the prompts")
    s.add_argument("--pairs", required=True)
    s.add_argument("--share", required=True, help="e.g. 1/16")
    s.add_argument("--out", required=True)
    p = sub.add_parser("split", help="hold out a share of the prompts")
    p.add_argument("--data", required=True, help="a data file, a directory of them, or a hub "
                   "dataset name")
    p.add_argument("--data-split", default="", help="the split of --data to read (a hub "
                   "dataset: default train)")
    p.add_argument("--data-config", default="", help="a hub dataset's configuration")
    p.add_argument("--share", type=float, required=True, help="held-out share of the prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", required=True, help="file for the rest")
    p.add_argument("--held-out", required=True, help="file for the held-out records")
    c = sub.add_parser("convert", help="a GGUF model as a Hugging Face directory")
    c.add_argument("--model", required=True, help="a .gguf file, or a directory holding one")
    c.add_argument("--out", required=True, help="the directory to write (must not exist)")
    return parser


def convert(model: str, out: str) -> Path:
    """``model`` (GGUF) written as a Hugging Face directory at ``out``, atomically: a temp
    directory beside it, renamed when complete."""
    import shutil

    from preflab import models

    target = Path(out)
    if target.exists():
        raise ConfigError("exists", path=out, expected="a new directory")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = models.load_tokenizer(model)
    models.save_model(models.load_causal_lm(model), tokenizer, tmp)
    tmp.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "convert":
            print(f"{args.model} -> {convert(args.model, args.out)} (safetensors, float32)")
        elif args.command == "subset":
            records = read_jsonl(args.pairs)
            kept = subset(records, parse_share(args.share))
            write_jsonl(args.out, kept)
            print(f"{len(kept)} of {len(records)} pairs ({args.share} of the prompts) -> {args.out}")
        else:
            if not 0 < args.share < 1:
                raise ConfigError("the held-out share must be in (0, 1)", field="share")
            records = read_jsonl(args.data, split=args.data_split, config=args.data_config)
            if len(_groups(records)) < 2:
                raise DataError("too few distinct prompts to hold some out", path=args.data,
                                expected="records with at least two different prompts")
            kept, held = split(records, args.share, args.seed)
            write_jsonl(args.keep, kept)
            write_jsonl(args.held_out, held)
            print(f"{len(kept)} records kept -> {args.keep}; {len(held)} held out -> "
                  f"{args.held_out}")
    except PreflabError as exc:
        print(f"preflab compare data: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    from preflab.runtime.exits import run_module

    sys.exit(run_module(main))
