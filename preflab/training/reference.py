"""Every way to hold the reference model pi_ref, behind one interface.

    copy          a separate frozen model in memory (the article's "two models")
    adapter-off   LoRA runs: the policy's own base with its adapters switched off (no copy)
    precomputed   reference log-probs computed in one pass before training, cached to disk,
                  and the reference freed (one model in memory)
    none          reference-free losses (SimPO, ORPO): nothing is loaded

``choose_mode`` derives the mode from the loss's needs and the flags; a trainer then asks
``Reference.logps(batch)`` and never branches on the mode again.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from preflab import models
from preflab.models.logprobs import SequenceLogps, concatenated_forward, forward_logps
from preflab.runtime import memory
from preflab.training import session

MODES = ("copy", "adapter-off", "precomputed", "none")


def choose_mode(*, needs_reference: bool, precompute: bool, lora: bool, separate_ref: bool) -> str:
    if not needs_reference:
        return "none"
    if precompute:
        return "precomputed"
    if lora and not separate_ref:
        return "adapter-off"
    return "copy"


def live(cfg, run, policy: torch.nn.Module, *, needed: bool = True) -> Reference:
    """pi_ref held live for the whole run, from a trainer's flags: nothing when the loss needs
    none; with LoRA and no ``--ref-model``, the policy's own base with adapters off; else a
    frozen copy of ``--ref-model`` (default ``--model``)."""
    if not needed:
        return Reference("none")
    packed = bool(getattr(cfg, "padding_free", False))
    if cfg.lora_rank > 0 and not cfg.ref_model:
        return Reference("adapter-off", policy=policy, padding_free=packed)
    model = session.load_reference(cfg, run, cfg.ref_model or cfg.model)
    return Reference("copy", model=model, padding_free=packed)


class Reference:
    """pi_ref for a trainer. ``logps(batch)`` returns (chosen, rejected) SequenceLogps."""

    def __init__(
        self,
        mode: str,
        *,
        model: torch.nn.Module | None = None,
        policy: torch.nn.Module | None = None,
        cache: dict[str, torch.Tensor] | None = None,
        padding_free: bool = False,
    ) -> None:
        assert mode in MODES, mode
        self.mode = mode
        self.padding_free = padding_free  # live forwards pack their rows (logprobs.pack)
        self.model = model  # the frozen copy (mode "copy")
        self.policy = policy  # the LoRA policy whose adapters are switched off
        self.cache = cache or {}  # split -> [N, 2 (chosen, rejected), 3 (sum, mean, count)]

    @torch.no_grad()
    def logps(self, batch: dict, *, split: str = "train") -> tuple[SequenceLogps, SequenceLogps]:
        if self.mode == "none":
            raise RuntimeError("a reference-free loss asked for reference log-probs")
        if self.mode == "precomputed":
            rows = self.cache[split][batch["index"]]
            return _unpack(rows[:, 0]), _unpack(rows[:, 1])
        return self.forward(batch)

    @torch.no_grad()
    def forward(self, batch: dict) -> tuple[SequenceLogps, SequenceLogps]:
        """A live forward pass of the reference (copy or adapters off)."""
        if self.mode == "copy":
            return concatenated_forward(self.model, batch, padding_free=self.padding_free)
        if self.mode == "adapter-off":
            with models.unwrap(self.policy).disable_adapter():
                return concatenated_forward(models.unwrap(self.policy), batch,
                                            padding_free=self.padding_free)
        raise RuntimeError(f"the {self.mode!r} reference has no model to run")

    @torch.no_grad()
    def completion_logps(self, batch: dict) -> torch.Tensor:
        """Summed completion log-probs ``[B]`` of a plain (not concatenated) batch with
        ``input_ids``, ``attention_mask`` and ``completion_mask``: KTO's single completions."""
        run = self.sequence_logps_fn()
        if run is None:
            raise RuntimeError(f"the {self.mode!r} reference has no model to run")
        return run(lambda model: forward_logps(model, batch["input_ids"], batch["attention_mask"],
                                               batch["completion_mask"])[0].sum)

    def sequence_logps_fn(self) -> Callable | None:
        """A function (model-forward-like) for sampled-KL evaluation, or None if unavailable."""
        if self.mode == "copy":
            return lambda fn: fn(self.model)
        if self.mode == "adapter-off":
            def run(fn):
                with models.unwrap(self.policy).disable_adapter():
                    return fn(models.unwrap(self.policy))
            return run
        return None

    def tensor_bytes(self, seen: set[int]) -> dict[str, int]:
        """Bytes the reference holds beyond what other roles already hold (``seen``)."""
        if self.mode == "copy":
            return memory.role_tensor_bytes(self.model, seen=seen)
        return {"params": 0, "grads": 0, "optimizer": 0, "total": 0}


def _unpack(rows: torch.Tensor) -> SequenceLogps:
    return SequenceLogps(sum=rows[:, 0], mean=rows[:, 1], count=rows[:, 2].long())


def _pack(chosen: SequenceLogps, rejected: SequenceLogps) -> torch.Tensor:
    def one(s: SequenceLogps) -> torch.Tensor:
        return torch.stack([s.sum.float(), s.mean.float(), s.count.float()], dim=-1)

    return torch.stack([one(chosen), one(rejected)], dim=1).cpu()


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@torch.no_grad()
def precompute(
    forward: Callable[[dict], tuple[SequenceLogps, SequenceLogps]],
    examples: Sequence,
    collate: Callable[[Sequence], dict],
    *,
    batch_size: int,
    cache_file: Path | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Reference log-probs of every example, ``[N, 2, 3]``; read from/written to ``cache_file``."""
    if cache_file is not None and cache_file.is_file():
        cached = torch.load(cache_file, map_location="cpu", weights_only=True)
        if cached.shape[0] == len(examples):
            return cached
    from tqdm.auto import tqdm

    rows = []
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, desc="reference log-probs", disable=not progress):
        chosen, rejected = forward(collate(examples[start : start + batch_size]))
        rows.append(_pack(chosen, rejected))
    table = torch.cat(rows) if rows else torch.zeros(0, 2, 3)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        # one temporary file per process: under torchrun every rank computes the same table,
        # and a shared temporary name let one rank's rename pull the file from under another
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
        torch.save(table, tmp)
        tmp.replace(cache_file)
    return table


def free(model: torch.nn.Module | None) -> None:
    """Drop a model and return its memory (CUDA cache included)."""
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
