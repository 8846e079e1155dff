"""bf16-mixed against fp32 on the built-in world: does the gold gain of DPO and PPO hold?

    python benchmarks/precision_world.py [--work-dir /tmp/precision_world] [--seeds 0,1,2]
        [--out precision_world.json] [--tolerance 0.03] [--threads 1]

What it checks: on the built-in world, in bf16-mixed on a CPU, DPO and PPO should reach a
gold gain within 0.03 of fp32's over the same steps. The jobs are ``preflab compare``'s own
(its design is built with the quick preset, methods dpo and ppo, and its commands are taken
from it), so the hyperparameters are exactly compare's:

    once      world build, sft, pairs, the SFT's score, the reward model (rm-s0), all as
              compare runs them (no --precision: auto, which is fp32 on a CPU)
    per seed  dpo and ppo (against rm-s0, the one reward model), each with --precision fp32
              and --precision bf16-mixed, then `python -m preflab.compare.score` of the policy
              against the SFT reference on the same held-out prompts

The gold gain of a run is its score's ``eval/gold_reward`` minus the SFT's (as compare measures
it). Prints one line per run (gain, eval/kl, wall seconds, the 1-minute load average when it
ended), then per method the mean gain of each precision with its min..max over seeds, and the
paired difference bf16-mixed - fp32 of each seed with its mean, max |difference| and whether
every one is within ``--tolerance``; writes all of it to ``--out``.

Each job runs alone in a fresh process with OMP_NUM_THREADS=``--threads``; its output goes to
WORK/logs/<run>.log. A run whose final/ and score exist is reused, so an interrupted benchmark
continues where it stopped; a run that fails is reported (its command and its log's last lines)
and the others go on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("dpo", "ppo")
PRECISIONS = ("fp32", "bf16-mixed")


def compare_design(work: Path, seeds: list[int]):
    """compare's design on WORK/world (quick preset, dpo and ppo, the seeds asked for)."""
    from preflab.compare.design import build
    from preflab.compare.settings import CompareConfig

    class Config(CompareConfig):
        def preset_settings(self):  # quick, with dpo and ppo at every seed, no probes
            return dataclasses.replace(super().preset_settings(), probes=(),
                                       seeds=max(seeds) + 1, seed_methods=METHODS)

    cfg = Config(world=str(work / "world"), output_dir=str(work / "cmp"), preset="quick",
                 methods=",".join(METHODS))
    cfg.validate()
    return build(cfg)


def replace_flag(words: list[str], flag: str, value: str) -> list[str]:
    i = words.index(flag)
    return [*words[: i + 1], value, *words[i + 2:]]


class Runner:
    def __init__(self, work: Path, threads: int) -> None:
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
                    "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
                    "WANDB_DISABLED": "true"}
        self.records_file = work / "records.json"
        self.records = (json.loads(self.records_file.read_text())
                        if self.records_file.exists() else {})

    def run(self, key: str, words: list[str], output: Path | None = None) -> dict:
        """Run one job (``words`` as in a compare Job); its record: wall s, load, rc."""
        from preflab.compare.harness import Job, command_line, display_line

        job = Job(key, words, Path(), kind=words[0])
        argv = command_line(job)
        if output is not None and output.is_dir() and any(output.iterdir()):
            argv.append("--overwrite")  # what an interrupted attempt left: start it again
        log = self.logs / f"{key}.log"
        print(f"  [{time.strftime('%H:%M:%S')}] {key}: {display_line(job)}", flush=True)
        start = time.perf_counter()
        with open(log, "w") as f:
            f.write(f"$ OMP_NUM_THREADS={self.env['OMP_NUM_THREADS']} {' '.join(argv)}\n")
            f.flush()
            rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=self.env,
                                cwd=ROOT).returncode
        record = {"command": display_line(job), "rc": rc,
                  "wall_s": round(time.perf_counter() - start, 1),
                  "load_1m": round(os.getloadavg()[0], 2), "log": str(log)}
        if rc != 0:
            record["error"] = log.read_text(errors="replace").strip().splitlines()[-15:]
            print(f"  FAILED {key} (exit {rc}); last lines of {log}:\n    "
                  + "\n    ".join(record["error"]), flush=True)
        self.records[key] = record
        self.records_file.write_text(json.dumps(self.records, indent=1) + "\n")
        return record


def gold_and_kl(score_file: Path) -> tuple[float, float | None]:
    metrics = json.loads(score_file.read_text())["metrics"]
    return metrics["eval/gold_reward"], metrics.get("eval/kl")


def summarize(rows: list[dict], seeds: list[int], tolerance: float) -> dict:
    out = {}
    for method in METHODS:
        gains = {p: {r["seed"]: r["gain"] for r in rows if r["method"] == method
                     and r["precision"] == p and r.get("gain") is not None} for p in PRECISIONS}
        entry = {p: {"mean": statistics.fmean(g.values()), "min": min(g.values()),
                     "max": max(g.values()), "n": len(g)} if g else None
                 for p, g in gains.items()}
        paired = {s: gains["bf16-mixed"][s] - gains["fp32"][s] for s in seeds
                  if s in gains["fp32"] and s in gains["bf16-mixed"]}
        entry["diff_bf16_minus_fp32"] = paired
        if paired:
            entry["diff_mean"] = statistics.fmean(paired.values())
            entry["diff_max_abs"] = max(abs(d) for d in paired.values())
            entry["all_within_tolerance"] = all(abs(d) <= tolerance for d in paired.values())
        entry["complete"] = len(paired) == len(seeds)
        out[method] = entry
    return out


def print_summary(summary: dict, tolerance: float) -> None:
    for method, e in summary.items():
        print(f"\n{method}:")
        for p in PRECISIONS:
            if e[p]:
                print(f"  {p:<10} mean gain {e[p]['mean']:+.4f}  (min..max {e[p]['min']:+.4f}"
                      f"..{e[p]['max']:+.4f}, {e[p]['n']} seeds)")
        d = e["diff_bf16_minus_fp32"]
        if d:
            per = ", ".join(f"s{s} {v:+.4f}" for s, v in d.items())
            print(f"  bf16-mixed - fp32 per seed: {per}")
            print(f"  mean {e['diff_mean']:+.4f}, max |diff| {e['diff_max_abs']:.4f}; every "
                  f"|diff| <= {tolerance}: {'yes' if e['all_within_tolerance'] else 'NO'}"
                  + ("" if e["complete"] else " (not every seed finished)"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="/tmp/precision_world",
                        help="world, runs, scores and logs (reused when re-run)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--out", default="precision_world.json", help="JSON file to write")
    parser.add_argument("--tolerance", type=float, default=0.03,
                        help="largest |gain(bf16-mixed) - gain(fp32)| accepted")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each job")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    import torch

    design = compare_design(work, seeds)
    jobs = design.jobs
    runner = Runner(work, args.threads)
    print(f"precision_world: seeds {seeds}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start, torch {torch.__version__}, "
          f"work dir {work}", flush=True)

    # the shared stages, as compare runs them
    for key in ("world", "sft", "pairs", "score-sft", "rm-s0"):
        if key not in jobs or jobs[key].done.exists():
            continue
        output = jobs[key].meta.get("output")
        if key == "world":
            output = None  # `world build` into an empty directory needs no --overwrite
        record = runner.run(key, jobs[key].words, Path(output) if output else None)
        if record["rc"] != 0 or not jobs[key].done.exists():
            sys.exit(f"{key} failed; the rest needs it")
    sft_gold, _ = gold_and_kl(work / "cmp" / "scores" / "sft.json")
    print(f"SFT gold reward {sft_gold:.4f} (score-sft)", flush=True)

    rows: list[dict] = []
    runs_dir, scores_dir = work / "runs", work / "scores"
    rm_dir = work / "cmp" / "runs" / "rm-s0"
    header = (f"{'method':<6} {'precision':<11} {'seed':>4} {'gold':>8} {'gain':>8} "
              f"{'eval/kl':>8} {'train s':>8} {'score s':>8} {'load 1m':>8}")
    lines = []
    for seed in seeds:
        for method in METHODS:
            base = jobs[f"{method}-s{seed}"].words
            score_base = jobs[f"score-{method}-s{seed}"].words
            for precision in PRECISIONS:
                name = f"{method}-{precision}-s{seed}"
                run_dir, score_file = runs_dir / name, scores_dir / f"{name}.json"
                words = replace_flag(base, "--output-dir", str(run_dir))
                if method == "ppo":  # every seed's PPO against the one reward model
                    words = replace_flag(words, "--reward", str(rm_dir))
                words += ["--precision", precision]
                row = {"method": method, "precision": precision, "seed": seed,
                       "run_dir": str(run_dir), "score_file": str(score_file)}
                reused = (run_dir / "final").is_dir() and (run_dir / "summary.json").exists()
                if not reused:
                    record = runner.run(name, words, run_dir)
                    if record["rc"] != 0 or not (run_dir / "final").is_dir():
                        row.update(status="failed", error=record.get("error"),
                                   command=record["command"])
                        rows.append(row)
                        continue
                if not score_file.exists():
                    score_words = replace_flag(replace_flag(score_base, "--policy",
                                                            str(run_dir / "final")),
                                               "--out", str(score_file))
                    record = runner.run(f"score-{name}", score_words)
                    if record["rc"] != 0 or not score_file.exists():
                        row.update(status="score failed", error=record.get("error"),
                                   command=record["command"])
                        rows.append(row)
                        continue
                gold, kl = gold_and_kl(score_file)
                train = runner.records.get(name, {})
                summary = json.loads((run_dir / "summary.json").read_text())
                row.update(status="done", gold=gold, gain=gold - sft_gold, kl=kl,
                           command=train.get("command"), process_wall_s=train.get("wall_s"),
                           trainer_wall_s=summary.get("wall_s"),
                           steps=summary.get("steps"),
                           score_wall_s=runner.records.get(f"score-{name}", {}).get("wall_s"),
                           load_1m=train.get("load_1m"))
                rows.append(row)
                line = (f"{method:<6} {precision:<11} {seed:>4} {gold:>8.4f} {gold - sft_gold:>+8.4f} "
                        f"{kl if kl is not None else float('nan'):>8.3f} "
                        f"{row['process_wall_s'] or float('nan'):>8.1f} "
                        f"{row['score_wall_s'] or float('nan'):>8.1f} "
                        f"{row['load_1m'] if row['load_1m'] is not None else float('nan'):>8.2f}")
                lines.append(line)
                print(f"{header}\n{line}" if len(lines) == 1 else line, flush=True)

    summary = summarize(rows, seeds, args.tolerance)
    print("\n" + header + "\n" + "\n".join(lines))
    failed = [r for r in rows if r["status"] != "done"]
    for r in failed:
        print(f"{r['method']} {r['precision']} seed {r['seed']}: {r['status']}: {r['command']}")
    print_summary(summary, args.tolerance)
    loads = [r["load_1m"] for r in runner.records.values() if r.get("load_1m") is not None]
    total = time.perf_counter() - started
    print(f"\nwall {total / 60:.1f} min this invocation; 1-min load average at the end of each "
          f"job: {min(loads, default=0):.2f}..{max(loads, default=0):.2f} "
          f"(mean {statistics.fmean(loads) if loads else 0:.2f}) on {os.cpu_count()} CPUs; "
          f"jobs ran one at a time with OMP_NUM_THREADS={args.threads}")
    result = {
        "what": "gold gain (score eval/gold_reward minus the SFT's) of compare's quick-preset "
                "DPO and PPO, fp32 vs bf16-mixed",
        "tolerance": args.tolerance, "seeds": seeds, "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "work_dir": str(work), "sft_gold": sft_gold,
        "hyperparameters": design.inputs.get("hyperparameters", {}),
        "shared_jobs": {k: runner.records.get(k) for k in
                        ("world", "sft", "pairs", "score-sft", "rm-s0")},
        "runs": rows, "summary": summary, "wall_s_this_invocation": round(total, 1),
        "load_1m_per_job": {k: r.get("load_1m") for k, r in runner.records.items()},
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {Path(args.out).resolve()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
