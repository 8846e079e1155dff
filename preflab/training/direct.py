"""The direct-preference step that ``preflab dpo`` and ``preflab online-dpo`` share: the flags
(``DirectConfig``), one concatenated batch's per-example losses and logged figures
(``preference_step``), the held-out evaluation (``evaluate``), and what both bring to the
step loop of ``preflab.training.steps`` (``DirectSteps``).

The loss comes from the registry in ``preflab.losses``, which also says whether log-probs
are summed or averaged over tokens and whether an SFT term is added; the reference's
log-probs come from wherever ``preflab.training.reference`` holds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any

import torch

from preflab import models
from preflab.config import arg, fsdp_arg
from preflab.data import collate_preference
from preflab.errors import ConfigError
from preflab.evaluation import SampledEvalConfig, evaluate_policy
from preflab.losses import DIRECT_LOSSES, LOSS_PARAMS, compute_direct_loss, get_direct_loss
from preflab.losses.registry import check_direct_loss_args
from preflab.models.logprobs import concatenated_forward
from preflab.runtime import distributed, memory
from preflab.training import reference, session, steps

STAT_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
             "rewards/accuracies", "logps/chosen", "logps/rejected")


def with_loss_params(cls: type) -> type:
    """``cls`` with one flag per loss hyperparameter (``preflab.losses.LOSS_PARAMS``), as each
    loss declares it: a new loss's hyperparameter reaches every direct trainer from there."""
    extra = [(name, float, arg(p.default, p.help, ge=p.ge, lt=p.lt))
             for name, p in LOSS_PARAMS.items()]
    out = make_dataclass(cls.__name__, extra, bases=(cls,))
    out.__module__, out.__qualname__, out.__doc__ = cls.__module__, cls.__qualname__, cls.__doc__
    return out


@with_loss_params
@dataclass
class DirectConfig(SampledEvalConfig):
    """The shared training flags plus the direct-preference ones (``preflab dpo`` and
    ``preflab online-dpo``)."""

    learning_rate: float = arg(1e-6, "Peak learning rate of AdamW (the DPO paper used 1e-6).",
                               gt=0)
    warmup_ratio: float = arg(0.1, "Warm-up as a fraction of the total steps.", ge=0, lt=1)
    loss: str = arg("sigmoid", "The direct-preference loss.", choices=tuple(DIRECT_LOSSES))
    beta: float = arg(
        0.1, "beta: strength of the KL tie to the reference (ORPO: weight of the odds-ratio term).",
        gt=0,
    )
    ref_model: str = arg(
        "", "Reference model (default: --model). With LoRA and no --ref-model, the reference "
        "is the base with adapters off.", path="model"
    )
    precompute_ref: bool = arg(
        False, "Compute reference log-probs once before training, cache them and free the "
        "reference (one model in memory)."
    )
    padding_free: bool = arg(
        False, "Pack each micro-batch's chosen and rejected sequences into as few rows as fit "
        "(no row longer than the longest sequence), positions restarting per sequence: "
        "little compute on padding (policy and live reference). Needs an "
        "attention that honours restarting position ids (transformers' sdpa, eager or flash "
        "attention); checked at the start."
    )
    fsdp: bool = fsdp_arg("policy", "; the reference stays whole on each process, "
                          "and --eval-prompts samples on every process in lockstep")

    def loss_params(self) -> dict[str, float]:
        """This run's values of every loss's own hyperparameters (``LOSS_PARAMS``)."""
        return {name: getattr(self, name) for name in LOSS_PARAMS}

    def validate(self) -> None:
        super().validate()
        spec = get_direct_loss(self.loss)
        check_direct_loss_args(spec, beta=self.beta, **self.loss_params())
        if self.precompute_ref and not spec.needs_reference:
            raise ConfigError(f"--precompute-ref: --loss {self.loss} uses no reference model",
                              field="precompute_ref")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def preference_step(model, ref: reference.Reference, spec, cfg: DirectConfig, batch: dict, split: str):
    """Per-example losses and the figures to log, for one concatenated batch.

    The reference runs first: its forward pass's transient tensors (logits, a layer's
    activations) then never coexist with the policy's graph, which is held until backward."""
    pick = (lambda s: s.sum) if spec.logps == "sum" else (lambda s: s.mean)
    ref_chosen = ref_rejected = None
    if spec.needs_reference:
        rc, rr = ref.logps(batch, split=split)
        ref_chosen, ref_rejected = pick(rc), pick(rr)
    chosen, rejected = concatenated_forward(model, batch, padding_free=cfg.padding_free)
    if ref_chosen is not None:
        ref_chosen = ref_chosen.to(chosen.sum.device)
        ref_rejected = ref_rejected.to(chosen.sum.device)
    out = compute_direct_loss(
        spec,
        policy_chosen_logps=pick(chosen),
        policy_rejected_logps=pick(rejected),
        ref_chosen_logps=ref_chosen,
        ref_rejected_logps=ref_rejected,
        beta=cfg.beta,
        **{name: getattr(cfg, name) for name in spec.params},
    )
    losses = out.losses
    if spec.adds_sft_term:  # ORPO, CPO: the weighted mean token NLL of the chosen completion
        losses = losses - spec.sft_weight_of(cfg.loss_params()) * chosen.mean
    stats = torch.stack([
        losses.detach(), out.chosen_rewards, out.rejected_rewards,
        out.chosen_rewards - out.rejected_rewards,
        (out.chosen_rewards > out.rejected_rewards).float(),
        chosen.sum.detach(), rejected.sum.detach(),
    ]).double().sum(dim=1).cpu()  # sums over the batch, in STAT_KEYS order
    return losses, stats


def means(totals: torch.Tensor, count: float, prefix: str = "") -> dict[str, float]:
    return {prefix + k: (totals[i] / max(count, 1.0)).item() for i, k in enumerate(STAT_KEYS)}


@torch.no_grad()
def held_out_figures(model, ref, spec, cfg, examples, pad_id, run, *, tokenizer, prompts,
                     gold_fn) -> dict:
    """Held-out preference figures, plus sampled figures when --eval-prompts is given."""
    out: dict[str, float] = {}
    model.eval()
    if examples:
        totals = torch.zeros(len(STAT_KEYS), dtype=torch.float64)
        for idx, counted in steps.held_out_batches(len(examples), cfg, run):
            batch = collate_preference([examples[i] for i in idx], pad_id)
            batch["index"] = torch.tensor(idx)
            stats = preference_step(model, ref, spec, cfg, to_device(batch, run.device), "eval")[1]
            if counted:
                totals += stats
        totals = distributed.all_reduce_sum(totals, run.ctx)
        out.update(means(totals, float(len(examples)), prefix="eval/"))
    out.update(sampled_figures(model, ref, cfg, run, tokenizer, prompts, gold_fn))
    model.train()
    return out


def sampled_figures(model, ref, cfg, run, tokenizer, prompts, gold_fn) -> dict[str, float]:
    """What the policy writes on ``--eval-prompts`` (none given: nothing), scored by the gold
    reward and its KL to the reference (``evaluation.evaluate_policy``): the direct road's
    sampled evaluation, dpo's, online-dpo's and kto's."""
    if not prompts or not session.samples_here(cfg, run):
        return {}
    return evaluate_policy(
        models.unwrap(model), tokenizer, prompts,
        rewards={"gold_reward": gold_fn} if gold_fn is not None else None,
        reference=ref.sequence_logps_fn(), max_new_tokens=cfg.eval_max_new_tokens,
        temperature=cfg.eval_temperature, batch_size=max(cfg.eval_batch_size, 32),
        seed=cfg.seed,
    ).metrics


@dataclass
class DirectSteps:
    """The direct road's side of the step loop (``preflab.training.steps``): dpo's, and
    online-dpo's, whose ``examples`` are each round's pairs."""

    cfg: DirectConfig
    run: session.Run
    spec: Any
    """The loss's entry in ``preflab.losses``' registry."""
    model: torch.nn.Module
    reference: reference.Reference
    tokenizer: Any
    examples: list
    eval_examples: list
    prompts: list[str]
    """``--eval-prompts`` to sample at evaluation, with ``gold_fn`` to score them."""
    gold_fn: Any
    data_report: Any
    desc: str
    postfix: tuple[str, ...]
    headline: tuple[str, ...]
    extra: dict
    reward_models: list = field(default_factory=list)
    """Frozen models held for the whole run (online-dpo's judge), counted as ``reward``."""
    role: str = "policy"

    @property
    def forward(self) -> torch.nn.Module:
        return self.model

    def collate(self, drawn: list[list[int]]) -> tuple[list[dict], int]:
        batches = []
        for idx in drawn:
            batch = collate_preference([self.examples[j] for j in idx],
                                       self.tokenizer.pad_token_id)
            batch["index"] = torch.tensor(idx)  # where a precomputed reference looks
            batches.append(batch)
        return batches, self.cfg.batch_size * self.cfg.grad_accum * self.run.ctx.world_size

    def micro_step(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed loss, and the sums of STAT_KEYS with the pair count."""
        losses, stats = preference_step(model, self.reference, self.spec, self.cfg,
                                        to_device(batch, self.run.device), "train")
        return losses.sum(), torch.cat([stats, torch.tensor([float(len(losses))],
                                                            dtype=torch.float64)])

    def means(self, totals: torch.Tensor) -> dict[str, float]:
        return means(totals[:-1], totals[-1].item())

    def evaluate(self) -> dict[str, float]:
        return held_out_figures(self.model, self.reference, self.spec, self.cfg, self.eval_examples,
                        self.tokenizer.pad_token_id, self.run, tokenizer=self.tokenizer,
                        prompts=self.prompts, gold_fn=self.gold_fn)

    def measure_roles(self, optimizer) -> dict[str, dict[str, int]]:
        seen: set[int] = set()  # the LoRA base counts once, under the policy
        roles = steps.measure_roles(self.model, optimizer, reference=self.reference, seen=seen)
        judges = [p for m in self.reward_models for p in m.parameters()]
        if judges:
            roles["reward"] = memory.role_tensor_bytes(judges, seen=seen)
        return roles
