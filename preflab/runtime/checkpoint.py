"""Checkpoints that a kill cannot corrupt, and that resume a run exactly.

A checkpoint ``checkpoints/step-N/`` holds the trainable weights (safetensors), the
optimizer and scheduler state, every RNG state and the data position. It is written to a
temporary sibling directory first and renamed into place, so a process killed mid-write
leaves either the previous checkpoint or the new one, never half of one.

Only trainable parameters are stored (all of them for full fine-tuning, the adapters for
LoRA): the frozen rest is reloaded from the base model on resume, bit for bit. A model sharded
with FSDP2 is saved whole: every rank joins in gathering its weights and optimizer state
(keyed by parameter name), rank 0 writes them, and a resume scatters them back.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from preflab.errors import ResumeError

STEP_DIR = re.compile(r"^step-(\d+)$")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().contiguous().cpu()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, Any],
    extra: dict[str, Any],
    keep: int = 2,
    gathered: dict[str, dict] | None = None,
    gathered_optimizer: dict | None = None,
) -> Path:
    """Write ``checkpoints/step-{step}`` atomically; keep the newest ``keep`` of them.

    ``gathered`` maps a sharded model's role to its full weights (``distributed.full_weights``),
    written instead of its own tensors; ``gathered_optimizer`` is the full state of the
    optimizer named ``optimizer`` over the sharded models (``distributed.full_optimizer_state``).
    """
    gathered = gathered or {}
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    for stale in root.glob(".tmp-step-*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    tmp.mkdir()
    for role, model in models.items():
        if role in gathered:
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            weights = {n: t.contiguous() for n, t in gathered[role].items() if n in trainable}
        else:
            weights = trainable_state(model)
        save_file(weights, str(tmp / f"{role}.safetensors"))
    state = {"step": step, **extra}
    state["optimizers"] = {name: opt.state_dict() for name, opt in optimizers.items()}
    if gathered_optimizer is not None:
        state["optimizers"]["optimizer"] = gathered_optimizer
    torch.save(state, tmp / "state.pt")
    _fsync_dir(tmp)
    if final.exists():  # a re-run of the same step after a resume: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path:
    found = list_checkpoints(run_dir)
    if not found:
        raise ResumeError(
            "--resume: no checkpoint to resume from (expected checkpoints/step-N/); "
            "run without --resume to start, or use --save-every to write checkpoints",
            path=str(run_dir),
        )
    return found[-1]


def load_checkpoint(
    path: str | Path,
    *,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, Any],
) -> dict[str, Any]:
    """Restore weights and optimizer states in place; return the rest of the saved state."""
    from preflab.runtime import distributed

    path = Path(path)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    sharded: dict[str, torch.nn.Module] = {}
    for role, model in models.items():
        weights = load_file(str(path / f"{role}.safetensors"))
        params = dict(model.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
        if missing:
            raise ResumeError(
                f"checkpoint does not match the model ({len(missing)} trainable tensors "
                f"missing, e.g. {missing[0]}); was the run started with other settings?",
                path=str(path),
            )
        if distributed.is_sharded(model):
            distributed.load_full_state(model, weights)
            sharded[role] = model
            continue
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
    for name, opt in optimizers.items():
        if sharded and name == "optimizer":
            distributed.load_full_state(distributed.optimizer_owner(sharded), {}, opt,
                                        state["optimizers"][name])
        else:
            opt.load_state_dict(state["optimizers"][name])
    return state
