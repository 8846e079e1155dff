"""The run directory (DESIGN.md, contract: run directory).

    config.yaml    resolved config + preflab version + git commit
    metrics.jsonl  one JSON object per logged step (runtime.metrics)
    summary.json   final figures
    checkpoints/   step-N/ (runtime.checkpoint)
    final/         loadable model + tokenizer (+ adapter/ for LoRA)
    README.md      a short model card

A directory that already holds a run is never reused silently: the user asks for
``--resume`` (continue) or ``--overwrite`` (replace).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

import preflab
from preflab.errors import ConfigError

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints", "final", "summary.json")


def git_commit() -> str | None:
    """The commit preflab's own source is at, if it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(preflab.__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def prepare_run_dir(output_dir: str, *, resume: bool, overwrite: bool, is_main: bool = True) -> Path:
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError("--output-dir exists and is a file", path=output_dir)
    holds_run = out.is_dir() and any((out / m).exists() for m in RUN_MARKERS)
    if resume:
        if not holds_run:
            raise ConfigError(
                "--resume: the output directory holds no run to continue", path=output_dir
            )
        return out
    if holds_run:
        if not overwrite:
            raise ConfigError(
                "the output directory already holds a run; pass --resume to continue it, "
                "--overwrite to replace it, or choose another --output-dir",
                path=output_dir,
            )
        if is_main:
            for marker in RUN_MARKERS + ("README.md", "tensorboard", "ref_logps"):
                target = out / marker
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    return out


def write_config(run_dir: Path, config: dict[str, Any], *, command: str) -> None:
    payload = {
        "command": command,
        "preflab_version": preflab.__version__,
        "git_commit": git_commit(),
        "config": config,
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(payload, sort_keys=False), encoding="utf-8")


def read_config(run_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["config"]


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def model_card(
    *, command: str, base_model: str, data: str, config: dict[str, Any], results: dict[str, Any]
) -> str:
    """A short README.md for a trained model: where it came from and how it did."""
    hyper = {k: config[k] for k in (
        "learning_rate", "batch_size", "grad_accum", "max_steps", "lora_rank", "seed",
        "beta", "loss", "kl_coef", "max_length") if k in config}
    lines = [
        f"# {Path(config.get('output_dir', 'model')).name}",
        "",
        f"Trained with `preflab {command}` (preflab {preflab.__version__}).",
        "",
        f"- base model: `{base_model}`",
        f"- data: `{data}`",
        f"- method: {command}",
        "",
        "## Hyperparameters",
        "",
        *[f"- {k}: {v}" for k, v in hyper.items()],
        "",
        "## Results",
        "",
        *[f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in results.items()],
        "",
    ]
    return "\n".join(lines)
