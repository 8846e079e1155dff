"""The run directory (docs/architecture.md, contract: run directory).

    config.yaml    resolved config + preflab version + git commit
    metrics.jsonl  one JSON object per logged step (runtime.metrics)
    summary.json   final figures
    checkpoints/   step-N/ (runtime.checkpoint)
    final/         loadable model + tokenizer (+ adapter/ for LoRA)
    README.md      a short model card

A directory that already holds a run is never reused silently: the user asks for
``--resume`` (continue) or ``--overwrite`` (replace), and the old run is removed only once the
new one has loaded its data and models. A directory of other files is refused. One run at a
time: ``.preflab.lock`` holds the PID of the run using the directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

import preflab
from preflab.errors import ConfigError

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints", "final", "summary.json",
               "ref_logps", "rounds")
# Also written by a run, and removed with it by --overwrite.
RUN_FILES = ("README.md", "tensorboard", "judge-cache.sqlite")


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


LOCK = ".preflab.lock"
# Settings a resumed run may change: how it reports and checkpoints, not what it computes.
RESUMABLE_CHANGES = {"resume", "overwrite", "log_every", "eval_every", "save_every",
                     "save_total_limit", "progress", "report_to", "max_steps", "num_epochs",
                     "eval_batch_size", "device", "generation_batch_size", "nonfinite"}


def holds_run(out: Path) -> bool:
    return out.is_dir() and any((out / m).exists() or (out / m).is_symlink() for m in RUN_MARKERS)


def prepare_run_dir(output_dir: str, *, resume: bool, overwrite: bool, is_main: bool = True) -> Path:
    """Check that a run may start in ``output_dir`` and take its lock; nothing is deleted here
    (``--overwrite`` removes the old run in ``clear_old_run``, once the new one can start)."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError("--output-dir exists and is a file", path=output_dir)
    if resume:
        if not holds_run(out):
            raise ConfigError(
                "--resume: the output directory holds no run to continue", path=output_dir
            )
    elif holds_run(out):
        if not overwrite:
            raise ConfigError(
                "the output directory already holds a run; pass --resume to continue it, "
                "--overwrite to replace it, or choose another --output-dir",
                path=output_dir,
            )
    elif out.is_dir() and [p for p in out.iterdir() if p.name != LOCK]:
        raise ConfigError(
            "the output directory holds other files and no preflab run; choose a new or empty "
            "directory (preflab never writes over files it did not make)", path=output_dir)
    if is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the output directory: {exc.strerror or exc}",
                              path=output_dir) from None
        take_lock(out)
    return out


def take_lock(out: Path) -> None:
    """One run per directory: ``.preflab.lock`` holds the PID of the run that uses it."""
    path = out / LOCK
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise ConfigError(f"another preflab run (PID {pid}) is using this directory; "
                                  "wait for it or stop it first", path=str(out)) from None
            path.unlink(missing_ok=True)  # left by a run that is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return
    raise ConfigError("could not take the run directory's lock", path=str(path))


def release_lock(out: Path) -> None:
    path = Path(out) / LOCK
    try:
        if int(path.read_text().strip() or 0) == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_entry(target: Path) -> None:
    """Delete a file, a symlink (not what it points to) or a directory tree."""
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)


def clear_old_run(out: Path) -> None:
    """``--overwrite``: remove what the previous run wrote (and only that)."""
    for marker in RUN_MARKERS + RUN_FILES:
        remove_entry(out / marker)


def config_changes(run_dir: Path, new: dict[str, Any], *, checkpoint_step: int | None) -> list[str]:
    """``field: old -> new`` for each setting a resume may not change."""
    try:
        old = read_config(run_dir)
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return []  # no readable config: nothing to compare against
    changes = []
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE_CHANGES or old.get(key) == new.get(key):
            continue
        if key not in old and new.get(key) == "":  # a setting added since, left empty
            continue
        changes.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    steps = new.get("max_steps", -1)
    if checkpoint_step is not None and 0 < steps < checkpoint_step:
        changes.append(f"max_steps: {steps} is below the checkpoint's step {checkpoint_step}")
    return changes


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
        f"- data: `{data}`" + "".join(f", {what} `{config[key]}`" for key, what in (
            ("data_split", "split"), ("data_config", "configuration")) if config.get(key)),
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
