"""``preflab label``: preference pairs (or KTO labels) from sampled completions and a judge.

    preflab sample --model runs/sft/final --prompts prompts.jsonl --n 4 --out samples.jsonl
    preflab label --judge lm:Qwen/Qwen2.5-7B-Instruct --in samples.jsonl --out pairs.jsonl
    preflab dpo --model runs/sft/final --data pairs.jsonl --output-dir runs/dpo

``--in`` is a samples file (``{"prompt", "completions": [...]}`` per record, as ``preflab
sample`` writes; a chat prompt is a list of messages, with ``prompt_text``, the text its
chat template rendered for the model). Of each prompt's completions, the empty ones and repeats are set aside;
the rest are compared in pairs by the judge (``preflab.judges``: ``P(a better)``), and
``--pairing`` says which pairs are compared and which are written:

    best-worst   every pair is compared (K(K-1)/2 per prompt). Each completion's win rate is
                 the mean of its P over its comparisons; the pair written is the highest
                 win rate (chosen) against the lowest (rejected), when the judge also prefers
                 it in their own comparison. One pair per prompt, the widest margin: the
                 rule of best-of-n and iterative DPO (Xiong et al. 2024).
    all          every pair is compared; every one the judge decides (P != 1/2) is written.
    adjacent     completions 1-2, 3-4, ... are compared (K/2 per prompt, the cheapest);
                 each decided one is written.

A pair is ``{"prompt", "chosen", "rejected", "p_chosen"}`` (P(chosen better)), the
preference format ``preflab dpo`` and ``preflab rm`` read. With ``--kto`` each compared
completion is written as ``{"prompt", "completion", "label", "win_rate"}``: desirable when
its win rate is above 1/2, undesirable below, left out at exactly 1/2 (``preflab kto``).

Chat prompts: the judge reads ``prompt_text``, the text the policy was sampled from (what
PPO's reward functions read as the prompt), and the records written are conversational
(TRL's format): ``{"prompt": [messages], "chosen": [{"role": "assistant", "content": ...}],
"rejected": [...]}``, and ``"completion": [{"role": "assistant", ...}]`` with ``--kto``. The
trainers render them with the same chat template, so they train on the prompt ids the
samples came from. Text and chat prompts may be mixed; each record keeps its own kind.
``--export-human`` takes text prompts only.

Every answer goes to the judge cache (``--cache``, by default ``<out>.judge-cache.sqlite``)
when its batch is answered: a run stopped by SIGTERM or Ctrl-C (exit 143 or 130), killed, or
failed on an endpoint is run again with the same command, and asks only what is left.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from preflab.config import check_new_file
from preflab.data.formats import check_prompt_messages
from preflab.data.human_labels import FORMATS, export_for_people, read_people_labels
from preflab.data.readers import read_records
from preflab.data.writers import write_jsonl, write_text
from preflab.errors import ConfigError, DataError
from preflab.judges import JudgeOptions, check_judge_spec, load_judge
from preflab.judges.cache import CachedJudge, JudgeCache, JudgeError
from preflab.judges.pairing import PAIRINGS, Group, agreement, comparisons, make_outputs
from preflab.judges.template import DEFAULT_TEMPLATE, parse_answers, read_template
from preflab.runtime import signals
from preflab.runtime.progress import progress_bar


def read_samples(path: str) -> tuple[list[Group], dict]:
    """The samples file's prompts with their usable completions, and what was set aside.

    A chat prompt (a list of messages) comes with ``prompt_text``, the text the sampled model
    saw (its chat template's rendering): that is what the judge reads, as PPO's reward
    functions read ``PromptExample.prompt``, and the messages stay for the pairs written."""
    groups, empty, repeated = [], 0, 0
    for record in read_records(path):
        prompt, completions = record.data.get("prompt"), record.data.get("completions")
        messages = None
        if isinstance(prompt, list):
            check_prompt_messages(record, "prompt", prompt)
            messages, prompt = prompt, record.data.get("prompt_text")
            if not isinstance(prompt, str) or not prompt.strip():
                raise DataError("a chat prompt (a list of messages) needs its rendered text",
                                path=record.path, line=record.line, field="prompt_text",
                                expected="the prompt as the sampled model's chat template "
                                         "renders it, as `preflab sample` writes it")
        elif not isinstance(prompt, str) or not prompt.strip():
            raise DataError("each record needs a non-empty text prompt or a list of messages",
                            path=record.path, line=record.line, field="prompt",
                            expected="a record {prompt, completions} as `preflab sample` "
                                     "writes")
        if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
            raise DataError("the completions are not a list of texts", path=record.path,
                            line=record.line, field="completions",
                            expected="a JSON list of strings, as `preflab sample` writes")
        usable = [c for c in completions if c.strip()]
        empty += len(completions) - len(usable)
        distinct = list(dict.fromkeys(usable))
        repeated += len(usable) - len(distinct)
        groups.append(Group(prompt, distinct, messages))
    return groups, {"prompts": len(groups), "empty": empty, "repeated": repeated,
                    "completions": sum(len(g.completions) for g in groups)}


def judge_all(judge: CachedJudge, groups: Sequence[Group], todo: list[tuple[int, int, int]],
              *, desc: str, progress: bool = True) -> list[float]:
    """P(i better than j) for each (group, i, j), batch by batch through the cached judge.
    Between batches, a SIGTERM or SIGINT stops the run (everything answered is cached)."""
    prompts = [groups[g].prompt for g, _, _ in todo]
    a = [groups[g].completions[i] for g, i, _ in todo]
    b = [groups[g].completions[j] for g, _, j in todo]
    cached = judge.cached_count(prompts, a, b)
    if cached:
        print(f"{desc}: {cached} of {len(todo)} pairs already answered in the cache "
              f"{judge.cache.path}", flush=True)
    out: list[float] = []
    bar = progress_bar(total=len(todo), desc=desc, enabled=progress, unit="pairs")
    try:
        for start in range(0, len(todo), judge.batch_size):
            signum = signals.requested_signal()
            if signum is not None:
                raise signals.Interrupted(
                    f"stopped by {signal.Signals(signum).name} after judging {start} of "
                    f"{len(todo)} pairs; every answer so far is in the cache {judge.cache.path}: "
                    "run the same command again to continue", signum=signum)
            end = start + judge.batch_size
            try:
                out += judge(prompts[start:end], a[start:end], b[start:end])
            except JudgeError as exc:
                raise JudgeError(f"{exc.message}. The answers so far are kept in the cache "
                                 f"{judge.cache.path}: the same command continues from them",
                                 expected=exc.expected) from None
            bar.update(min(end, len(todo)) - start)
    finally:
        bar.close()
    return out


# ------------------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="preflab label", description=__doc__, allow_abbrev=False,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100))
    add = p.add_argument
    add("--judge", default="", metavar="SPEC", help="Who judges: lm:PATH, http:MODEL[@URL], "
        "world:DIR, world-gold:DIR, a `preflab rm` run directory, module:function, "
        "file.py:function (runs that file as code), or a weighted sum 'a:0.7,b:0.3'. "
        "Required unless only exporting for people (default: none)")
    add("--in", dest="input", default="", metavar="SAMPLES",
        help="samples file from `preflab sample`: {prompt, completions} records")
    add("--out", default="", metavar="PAIRS", help="file to write (.jsonl): pairs {prompt, "
        "chosen, rejected, p_chosen}, or with --kto {prompt, completion, label, win_rate}")
    add("--kto", action="store_true", help="write unpaired KTO labels instead of pairs: "
        "desirable when a completion's win rate is above 1/2")
    add("--pairing", default="best-worst", choices=sorted(PAIRINGS),
        help="which pairs are compared and written (see above) (default: best-worst)")
    add("--agreement-judge", default="", metavar="SPEC2", help="a second judge (e.g. "
        "world-gold:DIR) asked the same pairs; the agreement is printed and saved to "
        "<out stem>.agreement.json (default: none)")
    add("--export-human", default="", metavar="FILE", help="also write the pairs (or "
        "completions) to FILE.csv or FILE.jsonl with an empty label column for people to fill "
        "in (a or b; good or bad; or skip) (default: none)")
    add("--import-human", default="", metavar="FILE", help="read a file exported with "
        "--export-human and filled in by people; write its labels to --out (no judge needed; "
        "with --agreement-judge, the judge's agreement with the people) (default: none)")
    add("--cache", default="", metavar="FILE", help="judge cache (SQLite); every answer is "
        "kept there (default: <out stem>.judge-cache.sqlite beside --out)")
    add("--overwrite", action="store_true", help="replace existing output files")
    add("--seed", type=int, default=0, metavar="N", help="seed of the simulated annotators' draws and of "
        "the a/b order in --export-human (default: 0)")
    add("--progress", action=argparse.BooleanOptionalAction, default=True,
        help="show progress (default: on)")
    j = p.add_argument_group("judges")
    j.add_argument("--judge-template", default="", metavar="FILE", help="text file with the "
                   "question for lm: and http: judges; placeholders {prompt}, {a}, {b}, and "
                   "optionally {label_a}, {label_b} (default: the built-in template)")
    j.add_argument("--judge-answers", default="A,B", metavar="A,B", help="the two answers the lm:/http: judge "
                   "chooses between (default: A,B)")
    j.add_argument("--batch-size", type=int, default=8, metavar="N", help="pairs per judge call (lm: both "
                   "orders, so 2x sequences per forward) (default: 8)")
    j.add_argument("--device", default="auto", help="device of lm: and reward-model judges "
                   "(default: auto)")
    j.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights dtype of model judges (default: auto)")
    j.add_argument("--allow-pickle", action="store_true", help="allow pickle weight files "
                   "(.bin/.pt) for model judges; they can run code")
    j.add_argument("--trust-remote-code", action="store_true", help="run a hub judge model's "
                   "own code (only for repositories you trust)")
    h = p.add_argument_group("http judges")
    h.add_argument("--judge-base-url", default="https://api.openai.com/v1", metavar="URL",
                   help="OpenAI-compatible endpoint for http:MODEL (default: %(default)s)")
    h.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="NAME",
                   help="name of the environment variable that holds the API key; the key is "
                   "sent only in the Authorization header and written nowhere "
                   "(default: %(default)s)")
    h.add_argument("--judge-timeout", type=float, default=60.0, metavar="S",
                   help="seconds to wait for each reply (default: 60)")
    h.add_argument("--judge-retries", type=int, default=4, metavar="N", help="retries of a "
                   "timed-out, failed (5xx, 429, connection) or unreadable request, with "
                   "exponential backoff (default: 4)")
    h.add_argument("--judge-backoff", type=float, default=1.0, metavar="S", help="first retry "
                   "delay; doubles each retry, at most 30 s (default: 1)")
    h.add_argument("--judge-concurrency", type=int, default=4, metavar="N",
                   help="requests in flight at once (default: 4)")
    return p


def _options(args) -> JudgeOptions:
    checks = [("batch_size", args.batch_size >= 1, "an integer >= 1"),
              ("judge_concurrency", args.judge_concurrency >= 1, "an integer >= 1"),
              ("judge_retries", 0 <= args.judge_retries <= 100, "an integer from 0 to 100"),
              ("judge_timeout", 0 < args.judge_timeout < float("inf"), "a positive number"),
              ("judge_backoff", 0 <= args.judge_backoff < float("inf"), "a number >= 0"),
              ("seed", 0 <= args.seed < 2**63, "an integer >= 0")]
    for name, ok, expected in checks:
        if not ok:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)} is out of range",
                              field=name, expected=expected)
    template = read_template(args.judge_template) if args.judge_template else DEFAULT_TEMPLATE
    return JudgeOptions(template=template, answers=parse_answers(args.judge_answers),
                        base_url=args.judge_base_url, api_key_env=args.api_key_env,
                        timeout=args.judge_timeout, retries=args.judge_retries,
                        concurrency=args.judge_concurrency, backoff=args.judge_backoff,
                        batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                        seed=args.seed, allow_pickle=args.allow_pickle,
                        trust_remote_code=args.trust_remote_code)


def _stem_path(out: str, suffix: str) -> Path:
    path = Path(out)
    return path.with_name(path.stem + suffix)


def _check_args(args, options: JudgeOptions) -> None:
    """Every combination and output file, before anything is read or loaded."""
    if args.import_human:
        extra = [f for f, v in (("--in", args.input), ("--judge", args.judge),
                                ("--export-human", args.export_human), ("--kto", args.kto)) if v]
        if extra:
            raise ConfigError(f"--import-human reads people's labels; {extra[0]} has no use "
                              "with it", field="import_human")
        if not args.out:
            raise ConfigError("--import-human needs --out, the file to write", field="out")
    else:
        if not args.input:
            raise ConfigError("--in is required: the samples file to label", field="input",
                              expected="a file written by `preflab sample`")
        if not args.judge and not args.export_human:
            raise ConfigError("--judge is required (or --export-human alone, to have people "
                              "label the pairs)", field="judge")
        if not args.judge and PAIRINGS[args.pairing].needs_judge:
            raise ConfigError(f"--pairing {args.pairing} needs a judge; without --judge use "
                              "--pairing all or adjacent", field="pairing")
        if args.judge and not args.out:
            raise ConfigError("--out is required: the file to write the labels to", field="out")
        if args.agreement_judge and not args.judge:
            raise ConfigError("--agreement-judge compares two judges; give --judge too",
                              field="agreement_judge")
    if args.out:
        check_new_file(args.out, "out", args.overwrite, suffixes=(".jsonl",))
    if args.agreement_judge:
        check_new_file(str(_stem_path(args.out, ".agreement.json")), "agreement_judge",
                       args.overwrite, what="the agreement report")
    if args.export_human:
        check_new_file(args.export_human, "export_human", args.overwrite, suffixes=FORMATS)
    for spec, flag in ((args.judge, "--judge"), (args.agreement_judge, "--agreement-judge")):
        if spec:
            kind = check_judge_spec(spec, dataclasses.replace(options, flag=flag))
            if kind.sends_text_away:
                print(f"note: {flag} {spec.split('@')[0]} sends every prompt and completion to "
                      "a third-party endpoint", file=sys.stderr)


def _open_cache(args) -> JudgeCache:
    return JudgeCache(args.cache or _stem_path(args.out, ".judge-cache.sqlite"))


def _close_cache(cache: JudgeCache) -> None:
    """Close it; a cache that holds no answer (the run failed before the first) is removed."""
    empty = len(cache) == 0
    cache.close()
    if empty:
        cache.path.unlink(missing_ok=True)


def _open_judge(spec: str, flag: str, options: JudgeOptions, cache: JudgeCache):
    return load_judge(spec, cache=cache, options=dataclasses.replace(options, flag=flag))


def _save_agreement(args, report: dict) -> Path:
    path = _stem_path(args.out, ".agreement.json")
    write_text(path, json.dumps(report, indent=2) + "\n")
    rate = report["agreement"]
    shown = "n/a" if rate is None else f"{rate:.1%} ({report['agreed']}/{report['decided_by_both']})"
    print(f"agreement of {report['judge']} with {report['with']}: {shown} -> {path}")
    return path


def run_label(args, options: JudgeOptions) -> dict:
    groups, counts = read_samples(args.input)
    pairing = PAIRINGS[args.pairing]
    todo = comparisons(groups, pairing)
    chat = sum(g.messages is not None for g in groups)
    if chat and args.export_human:
        # People's label files hold text prompts, and a pair made from the rendered text
        # would train on it encoded again: not the prompt ids the policy was sampled from.
        raise ConfigError(f"--export-human writes text prompts for people, and {chat} of the "
                          f"{len(groups)} prompts of {args.input} are chat prompts (lists of "
                          "messages)", field="export_human",
                          expected="a judge (--judge) for chat prompts, or samples of text "
                                   "prompts")
    if not todo:
        raise DataError("no prompt has two distinct, non-empty completions, so there is "
                        "nothing to compare", path=args.input,
                        expected="samples with --n 2 or more and a temperature above 0")
    if not args.judge:  # people will label: export the pairs (or completions) unjudged
        items = ([{"prompt": groups[g].prompt, "completion": c}
                  for g in sorted({g for g, _, _ in todo}) for c in groups[g].completions]
                 if args.kto else
                 [{"prompt": groups[g].prompt, "chosen": groups[g].completions[i],
                   "rejected": groups[g].completions[j]} for g, i, j in todo])
        rows = export_for_people(args.export_human, items, seed=args.seed)
        print(f"{rows} {'completions' if args.kto else 'pairs'} for people to label -> "
              f"{args.export_human}")
        return {"exported": rows}
    cache = _open_cache(args)
    try:
        judge = _open_judge(args.judge, "--judge", options, cache)
        probabilities = judge_all(judge, groups, todo, desc="label", progress=args.progress)
        outputs = make_outputs(groups, todo, probabilities, pairing, kto=args.kto)
        report = None
        if args.agreement_judge:
            second = _open_judge(args.agreement_judge, "--agreement-judge", options, cache)
            others = judge_all(second, groups, todo, desc="agreement", progress=args.progress)
            report = {"judge": args.judge, "with": args.agreement_judge,
                      **agreement(probabilities, others)}
    finally:
        _close_cache(cache)
    write_jsonl(args.out, outputs)
    what = "KTO labels" if args.kto else "pairs"
    print(f"{len(outputs)} {what} from {counts['prompts']} prompts ({counts['completions']} "
          f"distinct completions; {counts['empty']} empty and {counts['repeated']} repeated set "
          f"aside); {len(todo)} comparisons: {judge.asked} asked of the judge, "
          f"{len(todo) - judge.asked} answered from the cache -> {args.out}")
    if report:
        _save_agreement(args, report)
    if args.export_human:
        rows = export_for_people(args.export_human, outputs, seed=args.seed)
        print(f"{rows} {what} for people to label -> {args.export_human}")
    return {"outputs": len(outputs), "comparisons": len(todo), "asked": judge.asked}


def run_import(args, options: JudgeOptions) -> dict:
    records, counts = read_people_labels(args.import_human)
    report = None
    if args.agreement_judge:
        if counts["kind"] != "pairs":
            raise ConfigError("--agreement-judge compares pairs; this file holds single "
                              "completions", field="agreement_judge")
        cache = _open_cache(args)
        try:
            judge = _open_judge(args.agreement_judge, "--agreement-judge", options, cache)
            groups = [Group(r["prompt"], [r["chosen"], r["rejected"]]) for r in records]
            todo = [(g, 0, 1) for g in range(len(groups))]
            others = judge_all(judge, groups, todo, desc="agreement", progress=args.progress)
        finally:
            _close_cache(cache)
        report = {"judge": f"people ({args.import_human})", "with": args.agreement_judge,
                  **agreement([1.0] * len(records), others)}
    write_jsonl(args.out, records)
    print(f"{counts['labelled']} {counts['kind']} labelled by people ({counts['skipped']} "
          f"skipped, of {counts['rows']} rows) -> {args.out}")
    if report:
        _save_agreement(args, report)
    return counts


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = _options(args)
    _check_args(args, options)
    with signals.graceful_stop():
        (run_import if args.import_human else run_label)(args, options)
    return 0


if __name__ == "__main__":
    from preflab.runtime.exits import run_module

    sys.exit(run_module(main))
