"""KTO: good/bad labels instead of pairs (Ethayarajh et al. 2024).

    preflab kto --model SFT_MODEL --data LABELLED --output-dir RUN

The data is unpaired ``{"prompt", "completion", "label"}`` records (label true = desirable),
or preference pairs, each split into a desirable (chosen) and an undesirable (rejected)
example. With ``r = log pi(y|x) - log pi_ref(y|x)`` and the reference point ``z0``:

    desirable:    w_D * (1 - sigmoid(beta * (r - z0)))
    undesirable:  w_U * (1 - sigmoid(beta * (z0 - r)))

``z0`` estimates KL(pi || pi_ref) from mismatched pairs: each example's prompt with the
completion of its partner, another example fixed for the whole run (the dataset in a seeded
random cycle). ``z0`` is the mean of ``log pi - log pi_ref`` over the mismatched pairs of the
whole optimizer batch, all micro-batches and processes together (an all-reduce), clamped at
0, and it carries no gradient. Because each example's partner is fixed, any split of the
batch into micro-batches or processes gives the same ``z0`` and the same update. Per-example
losses are summed and divided by the global batch, as in ``preflab dpo``.

The paper recommends ``w_D n_D / (w_U n_U)`` in [1, 4/3] (n: examples of each class); the
run warns with the weights that meet it when the data is imbalanced.

The loop is ``preflab.training.steps``; ``KTOSteps`` is what KTO brings to it.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass

import torch

from preflab.algorithms import Compared, Method
from preflab.config import arg, fsdp_arg, parse_config
from preflab.data import (
    TruncationPolicy,
    UnpairedExample,
    collate_unpaired,
    load_unpaired_dataset,
    split_train_eval,
)
from preflab.evaluation import SampledEvalConfig
from preflab.losses import kto_loss
from preflab.models.logprobs import forward_logps
from preflab.runtime import distributed
from preflab.training import reference, session, steps
from preflab.training.direct import sampled_figures

# Sums over a batch: loss, then per class (chosen = desirable, rejected = undesirable) the
# implicit reward beta * r, the policy log-prob and the count; then the reference point.
SUM_KEYS = ("loss", "rewards/chosen", "logps/chosen", "count/chosen", "rewards/rejected",
            "logps/rejected", "count/rejected", "kl")
RECOMMENDED_RATIO = (1.0, 4 / 3)  # w_D n_D / (w_U n_U), Ethayarajh et al. 2024, section 4.2


@dataclass
class KTOConfig(SampledEvalConfig):
    """``preflab kto``: the shared training flags plus KTO's."""

    learning_rate: float = arg(1e-6, "Peak learning rate of AdamW (the KTO paper's 5e-7 to "
                               "5e-6 for billion-parameter models).", gt=0)
    warmup_ratio: float = arg(0.1, "Warm-up as a fraction of the total steps.", ge=0, lt=1)
    beta: float = arg(0.1, "beta: strength of the tie to the reference.", gt=0)
    desirable_weight: float = arg(1.0, "w_D: weight of each desirable example's loss.", gt=0)
    undesirable_weight: float = arg(1.0, "w_U: weight of each undesirable example's loss.", gt=0)
    ref_model: str = arg(
        "", "Reference model (default: --model). With LoRA and no --ref-model, the reference "
        "is the base with adapters off.", path="model"
    )
    fsdp: bool = fsdp_arg("policy", "; the reference stays whole on each process, "
                          "and --eval-prompts samples on every process in lockstep")


def partners(n: int, seed: int) -> list[int]:
    """Each example's partner for the reference point: the dataset in a seeded random cycle,
    so no example is its own partner (for n >= 2) and the pairing never changes."""
    order = list(range(n))
    random.Random(f"{seed}-kto-partners").shuffle(order)
    partner = [0] * n
    for k, i in enumerate(order):
        partner[i] = order[(k + 1) % n]
    return partner


def mismatched(examples: list[UnpairedExample], partner: list[int], indices: list[int],
               max_length: int) -> list[UnpairedExample]:
    """Example i's prompt with its partner's completion, cut to fit ``max_length``."""
    out = []
    for i in indices:
        prompt = examples[i].prompt_ids
        completion = examples[partner[i]].completion_ids[: max(1, max_length - len(prompt))]
        out.append(UnpairedExample(prompt, completion, examples[i].label))
    return out


def _seq(model, batch: dict) -> torch.Tensor:
    seq, _ = forward_logps(model, batch["input_ids"], batch["attention_mask"],
                           batch["completion_mask"], keep_logits=False)
    return seq.sum


def reference_point(kl_sum: torch.Tensor, count: float, ctx: distributed.DistContext) -> torch.Tensor:
    """z0: ``kl_sum`` (of log pi - log pi_ref over mismatched pairs) over ``count`` pairs,
    summed over every process, as a mean clamped at 0, without gradient."""
    totals = torch.stack([kl_sum.detach().double().cpu().reshape(()),
                          torch.tensor(float(count), dtype=torch.float64)])
    totals = distributed.all_reduce_sum(totals, ctx)
    return (totals[0] / totals[1].clamp(min=1)).clamp(min=0).float()


@torch.no_grad()
def kl_sum(model, ref: reference.Reference, batches: list[dict]) -> torch.Tensor:
    """Sum over the mismatched batches of log pi - log pi_ref."""
    parts = [(_seq(model, b) - ref.completion_logps(b)).double().sum() for b in batches]
    return torch.stack(parts).sum().cpu() if parts else torch.zeros((), dtype=torch.float64)


def kto_step(model, ref: reference.Reference, cfg: KTOConfig, batch: dict,
             z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example losses and the batch sums to log (``SUM_KEYS`` order), at reference
    point ``z0``."""
    device = batch["input_ids"].device
    ref_logps = ref.completion_logps(batch)  # first: never on top of the policy's graph
    policy_logps = _seq(model, batch)
    labels = batch["labels"].to(device)
    losses, rewards = kto_loss(policy_logps, ref_logps, labels, z0.to(device), beta=cfg.beta,
                               desirable_weight=cfg.desirable_weight,
                               undesirable_weight=cfg.undesirable_weight)
    good, bad = labels, ~labels
    logps = policy_logps.detach()
    sums = torch.stack([
        losses.detach().sum(), rewards[good].sum(), logps[good].sum(), good.sum(),
        rewards[bad].sum(), logps[bad].sum(), bad.sum(), z0.to(device) * len(labels),
    ]).double().cpu()
    return losses, sums


def batches_for(examples, partner, indices, cfg: KTOConfig, pad_id: int, device):
    """The collated batch of ``indices`` and that of their mismatched pairs."""
    def collate(rows):
        return {k: v.to(device) for k, v in collate_unpaired(rows, pad_id).items()}

    return (collate([examples[i] for i in indices]),
            collate(mismatched(examples, partner, indices, cfg.max_length)))


def _means(sums: torch.Tensor, examples: float, prefix: str = "") -> dict[str, float]:
    """Per-class means (rewards, logps), the loss and kl per example, and the margin."""
    s = dict(zip(SUM_KEYS, sums.tolist()))
    n_good, n_bad = max(s["count/chosen"], 1.0), max(s["count/rejected"], 1.0)
    out = {"loss": s["loss"] / max(examples, 1.0), "kl": s["kl"] / max(examples, 1.0),
           "rewards/chosen": s["rewards/chosen"] / n_good,
           "rewards/rejected": s["rewards/rejected"] / n_bad,
           "logps/chosen": s["logps/chosen"] / n_good,
           "logps/rejected": s["logps/rejected"] / n_bad}
    out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
    return {prefix + k: v for k, v in out.items()}


def check_balance(cfg: KTOConfig, examples) -> str | None:
    """A warning with the recommended weights when ``w_D n_D / (w_U n_U)`` is outside [1, 4/3]."""
    n_good = sum(1 for e in examples if e.label)
    n_bad = len(examples) - n_good
    if not n_good or not n_bad:
        return (f"warning: the training data holds only {'desirable' if n_good else 'undesirable'}"
                " examples; KTO learns from both kinds")
    ratio = cfg.desirable_weight * n_good / (cfg.undesirable_weight * n_bad)
    low, high = RECOMMENDED_RATIO
    if low <= ratio <= high:
        return None
    lo = low * cfg.undesirable_weight * n_bad / n_good
    hi = high * cfg.undesirable_weight * n_bad / n_good
    return (f"warning: {n_good} desirable and {n_bad} undesirable examples give "
            f"w_D n_D / (w_U n_U) = {ratio:.3g}, outside the paper's recommended [1, 4/3]; "
            f"with --undesirable-weight {cfg.undesirable_weight:g}, use --desirable-weight "
            f"between {lo:.3g} and {hi:.3g}")


@torch.no_grad()
def held_out_figures(model, ref: reference.Reference, cfg: KTOConfig, examples, pad_id, run,
                     *, tokenizer, prompts, gold_fn) -> dict[str, float]:
    """Held-out KTO figures, plus sampled figures when --eval-prompts is given."""
    out: dict[str, float] = {}
    model.eval()
    if examples:
        size = cfg.eval_batch_size or cfg.batch_size
        partner = partners(len(examples), cfg.seed)
        mine = list(range(run.ctx.rank, len(examples), run.ctx.world_size))
        starts = distributed.even_starts(len(mine), size, run.ctx, even=cfg.fsdp)
        chunks = [batches_for(examples, partner, mine[i : i + size], cfg, pad_id, run.device)
                  for i in starts if i is not None]
        # a sharded model's forward passes are collective: spare batches keep the ranks in step
        missing = len(starts) - len(chunks)
        spares = [batches_for(examples, partner, (mine or [0])[:1], cfg, pad_id, run.device)
                  ] * missing if missing else []
        mine_kl = kl_sum(model, ref, [kl for _, kl in chunks])
        kl_sum(model, ref, [kl for _, kl in spares])  # discarded
        z0 = reference_point(mine_kl, len(mine), run.ctx)
        totals = torch.zeros(len(SUM_KEYS), dtype=torch.float64)
        for batch, _ in chunks:
            totals += kto_step(model, ref, cfg, batch, z0)[1]
        for batch, _ in spares:
            kto_step(model, ref, cfg, batch, z0)
        totals = distributed.all_reduce_sum(totals, run.ctx)
        out.update(_means(totals, float(len(examples)), prefix="eval/"))
    out.update(sampled_figures(model, ref, cfg, run, tokenizer, prompts, gold_fn))
    model.train()
    return out


class KTOSteps:
    """KTO's side of the step loop (``preflab.training.steps``): the labelled examples, the
    policy and reference, the reference point of each optimizer batch, one micro-batch's
    losses."""

    role, desc = "policy", "kto"
    postfix = ("loss", "rewards/margins", "kl", "eval/gold_reward")
    headline = ("eval/rewards/margins", "eval/gold_reward", "eval/kl")

    def __init__(self, cfg: KTOConfig, run: session.Run, tokenizer) -> None:
        self.cfg, self.run, self.tokenizer = cfg, run, tokenizer
        policy = TruncationPolicy(cfg.max_length, cfg.max_prompt_length or None, cfg.overlong)
        examples, self.data_report = load_unpaired_dataset(cfg.data, tokenizer, policy,
                                                           **cfg.data_source())
        eval_data, eval_source = cfg.eval_source()
        if eval_data:
            eval_examples, _ = load_unpaired_dataset(eval_data, tokenizer, policy, **eval_source)
        else:
            examples, eval_examples = split_train_eval(examples, cfg.eval_fraction, cfg.seed)
        self.examples, self.eval_examples = examples, eval_examples
        self.prompts, self.gold_fn = session.sampled_evaluation(cfg, run, tokenizer, policy)
        n_good = sum(e.label for e in examples)
        if run.ctx.is_main:
            print(f"data: {len(examples)} train examples ({n_good} desirable, "
                  f"{len(examples) - n_good} undesirable) / {len(eval_examples)} eval; "
                  f"{self.data_report.summary()}", flush=True)
            warning = check_balance(cfg, examples)
            if warning:
                print(warning, file=sys.stderr, flush=True)

        self.model = self.forward = session.load_trainable(cfg, run)
        self.model.train()
        session.claim_run_dir(run)
        self.reference = reference.live(cfg, run, self.model)
        session.shard_if_asked(cfg, run, self.model)  # after the reference copy: that stays whole
        self.partner = partners(len(examples), cfg.seed)
        self.global_batch = cfg.batch_size * cfg.grad_accum * run.ctx.world_size
        self.extra = {"reference_mode": self.reference.mode, "desirable_examples": n_good,
                      "undesirable_examples": len(examples) - n_good}

    def collate(self, drawn: list[list[int]]) -> tuple[list[dict], int]:
        """The micro-batches, each carrying the step's reference point ``z0``: from the whole
        optimizer batch (every micro-batch, every process), without gradient."""
        cfg = self.cfg
        pad_id, device = self.tokenizer.pad_token_id, self.run.device
        micro = [batches_for(self.examples, self.partner, idx, cfg, pad_id, device)
                 for idx in drawn]
        z0 = reference_point(kl_sum(self.model, self.reference, [kl for _, kl in micro]),
                             cfg.batch_size * cfg.grad_accum, self.run.ctx)  # no grad: no DDP
        return [dict(batch, z0=z0) for batch, _ in micro], self.global_batch

    def micro_step(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed loss, and the sums of SUM_KEYS with the example count."""
        losses, sums = kto_step(model, self.reference, self.cfg, batch, batch["z0"])
        count = torch.tensor([float(len(losses))], dtype=torch.float64)
        return losses.sum(), torch.cat([sums, count])

    def means(self, totals: torch.Tensor) -> dict[str, float]:
        return _means(totals[:-1], totals[-1].item())

    def evaluate(self) -> dict[str, float]:
        return held_out_figures(self.model, self.reference, self.cfg, self.eval_examples,
                        self.tokenizer.pad_token_id, self.run, tokenizer=self.tokenizer,
                        prompts=self.prompts, gold_fn=self.gold_fn)

    def measure_roles(self, optimizer) -> dict[str, dict[str, int]]:
        return steps.measure_roles(self.model, optimizer, reference=self.reference)


@session.trainer
def train(cfg: KTOConfig) -> dict:
    return steps.train(cfg, KTOSteps, command="kto", data="unpaired")


METHOD = Method(
    name="kto", road="direct",
    summary="KTO: good/bad labels instead of pairs, or pairs split into both",
    config=KTOConfig, roles=("policy", "reference"), trains=("policy",), prior_seconds=75,
    compared=(Compared(
        "kto", "KTO", "KTO: each pair split into a desirable (chosen) and an undesirable "
        "(rejected) example, a frozen copy as reference", "KTO, reference copy",
        plan="dpo-copy",  # a policy and a reference copy: counted as DPO
        world={"learning_rate": 3e-4, "beta": 1.0, "batch_size": 32, "max_steps": 300,
               "warmup_ratio": 0.1, "eval_every": 50},
        user={"eval_every": 100}),),
)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(KTOConfig, argv, prog="preflab kto", description=__doc__)
    session.run_command(train, cfg)
    return 0
