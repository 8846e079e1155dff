"""The comparison job: run the design's jobs, collect results.json, render the report.

``preflab.commands.compare`` reads the flags; ``run`` and ``finalize`` are the library.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from preflab.compare import criteria, sections, stats
from preflab.compare.design import build
from preflab.compare.harness import Harness
from preflab.compare.measure import collect
from preflab.compare.settings import CompareConfig
from preflab.config import check_paths
from preflab.errors import ConfigError

MADE_BY_COMPARE = ("runs", "scores", "data", "logs", "figures", "jobs.json", "design.json",
                   "results.json", "report.md", "report.html")


def remove_paths(root: Path, names) -> None:
    """Delete ``root/name`` for each name (a directory with what it holds), where it exists."""
    for name in names:
        target = root / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def check_output_dir(cfg: CompareConfig) -> Path:
    root = Path(cfg.output_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError("--output-dir exists and is a file", path=str(root))
    world = Path(cfg.world).resolve() if cfg.world else None
    others = [p for p in root.iterdir() if p.resolve() != world] if root.is_dir() else []
    if others and not (root / "design.json").exists():  # the comparison's own world may be there
        raise ConfigError("--output-dir holds files that are not a comparison; choose a new or "
                          "empty directory (nothing there is overwritten)", path=str(root))
    return root


def check_inputs(cfg: CompareConfig) -> None:
    check_paths(cfg)
    if cfg.world:
        world = Path(cfg.world)
        if world.exists() and not world.is_dir():
            raise ConfigError("--world is a file", path=cfg.world,
                              expected="a world directory, or a new path to build one in")
        if world.is_dir() and any(world.iterdir()) and not (world / "world.json").exists():
            raise ConfigError("--world holds files but no world.json", path=cfg.world,
                              expected="a directory made by `preflab world build`, or a new "
                                       "or empty one to build it in")
        return
    from preflab.data.readers import check_split

    for source in ("pairs", "prompts"):  # a local split that is not there fails now, not in a job
        check_split(getattr(cfg, source), getattr(cfg, f"{source}_split"),
                    split_flag=f"--{source}-split")
    from preflab.models import gguf_location

    if Path(cfg.model).exists() and gguf_location(cfg.model) is None \
            and not (Path(cfg.model) / "config.json").is_file():
        raise ConfigError("--model is not a Hugging Face model directory (no config.json) nor "
                          "a .gguf file", path=cfg.model)


def time_scale(cfg: CompareConfig) -> tuple[float, str]:
    """How much longer than the preset's priors this comparison's jobs should take: the compared
    model's parameters over the preset's ``prior_params``; with a sentence saying so."""
    from preflab.compare.plan_arch import parse_arch, read_config
    from preflab.errors import PreflabError

    preset = cfg.preset_settings()
    if cfg.mode == "world":
        return 1.0, "the built-in world's model"
    try:
        params = parse_arch(read_config(cfg.model)).lm_params()
    except PreflabError as exc:  # an architecture plan cannot count: the priors as they are
        return 1.0, f"unscaled (cannot count the model's parameters: {exc})"
    scale = params / preset.prior_params
    return scale, (f"{params / 1e6:,.1f}M parameters, {scale:.3g}x the "
                   f"{preset.prior_params / 1e6:,.1f}M the {cfg.preset} preset's times were "
                   "measured at")


def _processes(launcher: str) -> int:
    match = re.search(r"--(?:nproc[-_]per[-_]node|num[-_]processes)[= ](\d+)", launcher)
    return int(match.group(1)) if match else 1


def _count_lines(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return None


def finalize(root: Path, cfg: CompareConfig) -> dict:
    """results.json, figures, report.md and report.html from what the runs wrote."""
    from preflab.compare.plan import parse_memory
    from preflab.compare.report import render

    constraints = {"gpu_memory": cfg.gpu_memory,
                   "gpu_memory_bytes": parse_memory(cfg.gpu_memory) if cfg.gpu_memory else None,
                   "have": cfg.have, "objective_may_change": cfg.objective_may_change}
    settings = {"preset": cfg.preset, "methods": cfg.method_names(), "jobs": cfg.parallel_runs(),
                "threads": cfg.threads, "launcher": cfg.launcher,
                "processes_per_command": _processes(cfg.launcher),
                "time_budget_s": cfg.time_budget, "kl_blowup": cfg.kl_blowup,
                "kl_bound": cfg.kl_bound, "alpha": stats.ALPHA}
    results = collect(root, constraints=constraints, settings=settings)
    results["inputs"]["pair_counts"] = {share: _count_lines(path) for share, path in
                                        results["inputs"].get("pairs", {}).items()}
    derive(results)
    for run in results["runs"]:
        run.pop("examples", None)  # kept in scores/; the report shows `samples`
    (root / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    render(root)
    return json.loads((root / "results.json").read_text(encoding="utf-8"))


def derive(results: dict) -> dict:
    """The rows and sections, computed from what ``collect`` gathered. A kept results.json can
    be derived again with the current criteria (``scripts/docs_results.py`` does); its sample
    completions are kept as they are (the completions themselves are not kept)."""
    results["rows"] = criteria.rows(results)
    results["frontier"] = sections.frontier(results)
    results["diversity"] = sections.diversity(results)
    results["pareto"] = sections.pareto(results)
    if "samples" not in results:
        results["samples"] = sections.samples(results)
    results["summary"] = sections.summary_table(results)
    results["recommendation"] = sections.recommendation(results)
    return results


def print_table(results: dict, out=None) -> None:
    from preflab.compare.report import MARK, headline

    out = out or sys.stdout  # looked up now: a default bound at import outlives a replaced stdout

    print("\nThe article's table, measured", file=out)
    for r in results["rows"]:
        a = r["article"]
        print(f"\n{r['criterion']:<24} measured winner: {r['winner']} ({r.get('basis') or '-'}); "
              f"article: {a['winner']} ({MARK[r['agrees']]})", file=out)
        print(f"  RLHF: {r['rlhf']['text']}", file=out)
        print(f"  DPO:  {r['dpo']['text']}", file=out)
    print("\n" + headline(results), file=out)
    rec = results["recommendation"]
    if rec.get("choice"):
        print(f"Which to choose here: {rec['choice']}", file=out)


def run(cfg: CompareConfig) -> tuple[dict | None, list[str]]:
    """Run (or, with --dry-run, print) a comparison: ``(results, jobs that did not finish)``."""
    root = check_output_dir(cfg)
    check_inputs(cfg)
    design = build(cfg)
    scale, scale_note = time_scale(cfg)
    harness = Harness(root, design.jobs, parallel=cfg.parallel_runs(), launcher=cfg.launcher,
                      time_budget_s=cfg.time_budget, fresh=cfg.fresh,
                      threads_per_job=cfg.threads, cores=_cpus(), progress=cfg.progress,
                      prior_seconds=cfg.preset_settings().prior_seconds, time_scale=scale)
    if cfg.dry_run:
        harness.dry_run()
        return None, []
    if cfg.fresh:
        remove_paths(root, MADE_BY_COMPARE)
    root.mkdir(parents=True, exist_ok=True)
    design.save()
    expected = sum(harness.prior(job.kind) for job in design.jobs.values()) / harness.parallel
    print(f"preflab compare: {len(design.jobs)} jobs ({cfg.preset} preset, "
          f"{'world ' + cfg.world if cfg.world else 'your data'}) -> {root}; expected "
          f"{expected / 60:.0f} min ({scale_note})", flush=True)
    records = harness.run()
    results = finalize(root, cfg)
    return results, [k for k, r in records.items() if r.status != "done"]


def run_and_print(cfg: CompareConfig) -> int:
    """``preflab compare`` after its flags are read: run, print the table and where the report
    is, and return the exit status (3 when some runs did not finish)."""
    from preflab.runtime.signals import graceful_stop

    with graceful_stop():
        results, unfinished = run(cfg)
    if results is None:
        return 0
    print_table(results)
    print(f"\nreport: {Path(cfg.output_dir).resolve() / 'report.html'} (also report.md, "
          "results.json, figures/)")
    if unfinished:
        print(f"{len(unfinished)} jobs did not finish: {', '.join(unfinished)} "
              "(see the report and logs/)", file=sys.stderr)
        return 3
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
