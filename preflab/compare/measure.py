"""From finished runs to ``results.json``: every number the report shows, with where it came from.

``collect`` reads what compare wrote (``design.json``: which runs make up which experiment;
``jobs.json``: each process's status, wall and CPU seconds and peak RSS) and what each run
wrote in its ordinary run directory (``summary.json``: tensor bytes per role; ``metrics.jsonl``:
the curves) and its score (``scores/<run>.json``, from ``preflab.compare.score``). The rows of
the article's table are computed from these by ``preflab.compare.criteria``.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import preflab
from preflab.compare.methods import REGISTRY

CURVE_KEYS = ("eval/gold_reward", "eval/judge_reward", "eval/proxy_reward", "eval/kl",
              "eval/rewards/margins", "elapsed_s")
TRAIN_KEYS = ("loss", "rewards/margins", "objective/scores", "objective/kl", "elapsed_s")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def number(value) -> float | None:
    """A finite float, or None (the metric logger writes NaN and inf as strings)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_metrics(run_dir: Path) -> list[dict]:
    rows = []
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def curves(rows: list[dict], quality: str) -> dict:
    """The evaluation curve (step, quality, proxy, KL, implicit margin, elapsed) and the
    training curve (step, loss, ...) of one run, plus whether any value was not finite."""
    evals, train, nonfinite = [], [], False
    for row in rows:
        for value in row.values():
            if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf"):
                nonfinite = True
        q = number(row.get(f"eval/{quality}"))
        if q is not None:
            evals.append({"step": row["step"], "quality": q,
                          "kl": number(row.get("eval/kl")),
                          "proxy": number(row.get("eval/proxy_reward")),
                          "margin": number(row.get("eval/rewards/margins")),
                          "elapsed_s": number(row.get("elapsed_s"))})
        if "lr" in row:  # a training row (evaluation-only rows carry no learning rate)
            train.append({"step": row["step"], "loss": number(row.get("loss")),
                          "margin": number(row.get("rewards/margins")),
                          "scores": number(row.get("objective/scores")),
                          "kl": number(row.get("objective/kl")),
                          "elapsed_s": number(row.get("elapsed_s"))})
    # the trainers log the elapsed time on training rows only; give evaluations the last one
    last = 0.0
    by_step = {t["step"]: t["elapsed_s"] for t in train if t["elapsed_s"] is not None}
    for e in evals:
        if e["elapsed_s"] is None:
            e["elapsed_s"] = by_step.get(e["step"], last if e["step"] else 0.0)
        last = e["elapsed_s"] or last
    return {"eval": evals, "train": train, "nonfinite": nonfinite}


def machine() -> dict:
    import os

    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_cores": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def collect(root: Path, *, constraints: dict, settings: dict) -> dict:
    """Everything measured, before the rows are computed."""
    from preflab.runtime.rundir import git_commit

    design = _read_json(root / "design.json") or {}
    records = _read_json(root / "jobs.json") or {}
    runs_dir = root / "runs"
    jobs = {}
    for key, info in design.get("jobs", {}).items():
        record = records.get(key, {})
        status = record.get("status", "not run")
        run_dir = runs_dir / key
        summary = _read_json(run_dir / "summary.json") if run_dir.is_dir() else None
        entry = {"kind": info["kind"], "status": status, "after": info["after"],
                 "command": info["command"], "wall_s": record.get("wall_s"),
                 "cpu_s": record.get("cpu_s"), "process_peak_rss_bytes":
                 record.get("peak_rss_bytes"), "error": record.get("error", ""),
                 "log": record.get("log", "")}
        if summary is not None:
            entry.update(run_dir=str(run_dir.relative_to(root)), steps=summary.get("steps"),
                         train_wall_s=summary.get("wall_s"),
                         peak_rss_bytes=summary.get("peak_rss_bytes"),
                         cuda_max_allocated_bytes=summary.get("cuda_max_allocated_bytes"),
                         tensor_bytes=summary.get("tensor_bytes", {}),
                         time_s=summary.get("time_s"),
                         final_metrics={k: v for k, v in summary.get("final_metrics", {}).items()
                                        if k in ("eval/accuracy", "eval/loss",
                                                 "eval/rewards/accuracies")})
        jobs[key] = entry
    quality = design.get("quality", "gold_reward")
    sft_score = _score(root, design.get("sft_score", ""))
    runs = []
    for run in design.get("runs", []):
        method = REGISTRY.get(run["method"])
        statuses = [jobs.get(k, {}).get("status", "not run") for k in run["stages"]]
        if run.get("score"):
            statuses.append(jobs.get(run["score"], {}).get("status", "not run"))
        status = "done" if all(s == "done" for s in statuses) else next(
            s for s in statuses if s != "done")
        policy_dir = runs_dir / run["policy"]
        entry = {**run, "label": method.label if method else run["method"],
                 "memory_label": method.memory_label if method else run["method"],
                 "status": status, "run_dir": str(policy_dir.relative_to(root)),
                 "curves": curves(read_metrics(policy_dir), quality)}
        entry["score_job"] = entry.pop("score")
        score = _score(root, entry["score_job"] or "")
        if score is not None:
            entry["score"] = score["metrics"]
            entry["best_of"] = score.get("best_of", 1)  # > 1: eval/kl is best-of-n's bound
            entry["examples"] = score.get("examples", [])
            entry["per_prompt"] = _read_per_prompt(score, quality)
            entry["score_file"] = f"scores/{run['policy']}.json"
        runs.append(entry)
    finished = [(r["finished_at"], r.get("wall_s") or 0) for r in records.values()
                if isinstance(r, dict) and r.get("finished_at")]
    span = (max(t for t, _ in finished) - min(t - w for t, w in finished)) if finished else None
    failed = [{"key": k, "status": j["status"], "error": j["error"], "log": j["log"],
               "command": j["command"]}
              for k, j in jobs.items() if j["status"] not in ("done", "not run")]
    return {
        "schema": 1,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "preflab_version": preflab.__version__,
        "git_commit": git_commit(),
        "machine": machine(),
        "mode": design.get("mode"),
        "preset": design.get("preset"),
        "quality": {"metric": quality, "proxy": quality != "gold_reward",
                    "label": {"gold_reward": "gold reward",
                              "judge_reward": "judge reward model score (a proxy)"}.get(
                                  quality, quality)},
        "inputs": design.get("inputs", {}),
        "model": _model_facts(design.get("inputs", {}).get("sft")),
        "span_s": span,
        "settings": settings,
        "constraints": constraints,
        "jobs": jobs,
        "stages": design.get("stages", {}),
        "sft": {"score": sft_score["metrics"] if sft_score else None,
                "per_prompt": _read_per_prompt(sft_score, quality) if sft_score else {},
                "examples": sft_score.get("examples", []) if sft_score else [],
                "score_file": "scores/sft.json" if sft_score else None},
        "runs": runs,
        "failed": failed,
    }


PER_PROMPT_KEPT = ("harmlessness",)  # beside the quality metric: the world's second objective


def _read_per_prompt(score: dict, quality: str) -> dict:
    """The per-prompt means the rows read (the quality metric; harmlessness for flexibility)."""
    return {k: v for k, v in (score.get("per_prompt") or {}).items()
            if k == quality or k in PER_PROMPT_KEPT}


def _model_facts(sft: str | None) -> dict:
    """The compared model's parameters (counted from its config, as ``preflab plan`` counts
    them) and vocabulary, as far as they can be read."""
    from preflab.compare.plan_arch import parse_arch, read_config
    from preflab.errors import PreflabError

    if not sft:
        return {}
    try:
        config = read_config(sft)
    except (PreflabError, OSError):
        return {}
    try:
        params = parse_arch(config).lm_params()
    except PreflabError:
        params = None
    return {"params": params, "vocab_size": config.get("vocab_size"),
            "model_type": config.get("model_type")}


def _score(root: Path, job_key: str) -> dict | None:
    if not job_key:
        return None
    return _read_json(root / "scores" / (job_key.removeprefix("score-") + ".json"))
