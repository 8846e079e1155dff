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
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass

import torch

from preflab import models
from preflab.algorithms import Compared, Method
from preflab.config import arg, fsdp_arg, parse_config
from preflab.data import (
    TruncationPolicy,
    UnpairedExample,
    check_dataset,
    collate_unpaired,
    load_unpaired_dataset,
    split_train_eval,
)
from preflab.evaluation import SampledEvalConfig, evaluate_policy
from preflab.losses import kto_loss
from preflab.models.logprobs import forward_logps
from preflab.runtime import distributed, memory
from preflab.runtime.metrics import format_metrics
from preflab.runtime.stream import ExampleStream
from preflab.training import reference, session

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
def evaluate(model, ref: reference.Reference, cfg: KTOConfig, examples, pad_id, run, *, tokenizer,
             prompts, gold_fn) -> dict[str, float]:
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
    if prompts and session.samples_here(cfg, run):
        out.update(evaluate_policy(
            models.unwrap(model), tokenizer, prompts,
            rewards={"gold_reward": gold_fn} if gold_fn is not None else None,
            reference=ref.sequence_logps_fn(),
            max_new_tokens=cfg.eval_max_new_tokens, temperature=cfg.eval_temperature,
            batch_size=max(cfg.eval_batch_size, 32), seed=cfg.seed,
        ).metrics)
    model.train()
    return out


@session.trainer
def train(cfg: KTOConfig) -> dict:
    check_dataset(cfg.data, "unpaired", **cfg.data_source(), split_flag="--data-split")
    eval_data, eval_source = cfg.eval_source()
    check_dataset(eval_data, "unpaired", **eval_source, split_flag="--eval-data-split")
    check_dataset(cfg.eval_prompts, "prompt")
    run = session.start_run(cfg, "kto")
    session.check_fsdp(cfg, run)
    tokenizer = models.load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    policy = TruncationPolicy(cfg.max_length, cfg.max_prompt_length or None, cfg.overlong)
    examples, data_report = load_unpaired_dataset(cfg.data, tokenizer, policy,
                                                  **cfg.data_source())
    if eval_data:
        eval_examples, _ = load_unpaired_dataset(eval_data, tokenizer, policy, **eval_source)
    else:
        examples, eval_examples = split_train_eval(examples, cfg.eval_fraction, cfg.seed)
    prompts, gold_fn = session.sampled_evaluation(cfg, run, tokenizer, policy)
    if run.ctx.is_main:
        n_good = sum(e.label for e in examples)
        print(f"data: {len(examples)} train examples ({n_good} desirable, "
              f"{len(examples) - n_good} undesirable) / {len(eval_examples)} eval; "
              f"{data_report.summary()}", flush=True)
        warning = check_balance(cfg, examples)
        if warning:
            print(warning, file=sys.stderr, flush=True)

    model = session.load_trainable(cfg, run)
    model.train()
    session.claim_run_dir(run)
    ref = reference.live(cfg, run, model)
    session.shard_if_asked(cfg, run, model)  # after the reference copy: that stays whole
    steps = session.total_steps(cfg, len(examples), run.ctx)
    optimizer, scheduler = session.build_optimization(cfg, model, steps)
    partner = partners(len(examples), cfg.seed)
    stream = ExampleStream(list(range(len(examples))), seed=cfg.seed, rank=run.ctx.rank,
                           world_size=run.ctx.world_size)
    start_step = session.maybe_resume(cfg, run, models={"policy": model}, optimizer=optimizer,
                                      scheduler=scheduler, stream=stream)
    ddp_model = distributed.wrap_ddp(model, run.ctx, run.device)
    logger = session.open_logger(run, start_step)
    pad_id = tokenizer.pad_token_id
    eval_args = dict(tokenizer=tokenizer, prompts=prompts, gold_fn=gold_fn)
    if start_step == 0:
        logger.log(0, evaluate(model, ref, cfg, eval_examples, pad_id, run, **eval_args))

    global_batch = cfg.batch_size * cfg.grad_accum * run.ctx.world_size
    throughput = session.Throughput()
    bar = session.progress_bar(run, total=steps, initial=start_step, desc="kto")
    state = dict(models={"policy": model}, optimizer=optimizer, scheduler=scheduler, stream=stream)
    totals = torch.zeros(len(SUM_KEYS), dtype=torch.float64)
    counted = 0

    def measure_roles() -> dict[str, dict[str, int]]:
        seen: set[int] = set()  # the LoRA base counts once, under the policy
        return {"policy": memory.role_tensor_bytes(model, optimizer, seen=seen),
                "reference": ref.tensor_bytes(seen)}

    roles = None
    step = start_step
    for step in range(start_step + 1, steps + 1):
        step_loss = torch.zeros((), device=run.device)
        micro = [batches_for(examples, partner, stream.next_batch(cfg.batch_size), cfg, pad_id,
                             run.device) for _ in range(cfg.grad_accum)]
        # z0 from the whole optimizer batch (every micro-batch, every process), no gradient.
        z0 = reference_point(kl_sum(model, ref, [kl for _, kl in micro]),  # no grad: no DDP
                             cfg.batch_size * cfg.grad_accum, run.ctx)
        for i, (batch, _) in enumerate(micro):
            sync = i == cfg.grad_accum - 1 or not run.ctx.enabled
            with distributed.gradient_sync(ddp_model, sync):
                losses, sums = kto_step(ddp_model, ref, cfg, batch, z0)
                # DDP averages over ranks; scale so the update is the mean over the global batch.
                session.backward(run, losses.sum() * run.ctx.world_size / global_batch)
            step_loss += losses.detach().sum()
            totals += sums
            counted += len(losses)
            throughput.add(int(batch["attention_mask"].sum()))
        grad_norm = session.optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm,
                                           run=run, step=step, loss=step_loss)
        if roles is None:  # while gradients and optimizer state both exist
            roles = measure_roles()
        optimizer.zero_grad(set_to_none=True)
        bar.update(1)

        if step % cfg.log_every == 0 or step == steps:
            reduced = distributed.all_reduce_sum(torch.cat([totals, torch.tensor(
                [float(counted)], dtype=torch.float64)]), run.ctx)
            record = _means(reduced[:-1], reduced[-1].item())
            record.update(session.run_metrics(run, scheduler, throughput, stream, grad_norm))
            totals.zero_()
            counted = 0
            if cfg.eval_every and step % cfg.eval_every == 0 and step != steps:
                record.update(evaluate(model, ref, cfg, eval_examples, pad_id, run, **eval_args))
            logger.log(step, record)
            bar.set_postfix_str(format_metrics(record, ("loss", "rewards/margins", "kl",
                                                        "eval/gold_reward")))
        session.step_boundary(run, step, steps, **state)
    bar.close()

    final_eval = evaluate(model, ref, cfg, eval_examples, pad_id, run, **eval_args)
    roles = roles or measure_roles()
    final_metrics = {**final_eval, **{f"memory/tensor_bytes/{role}": figures["total"]
                                      for role, figures in roles.items()}}
    summary = session.finish_run(
        run, logger=logger, final_log=final_eval,
        headline=("eval/rewards/margins", "eval/gold_reward", "eval/kl"),
        model=model, tokenizer=tokenizer, steps=step, tokens=throughput.tokens * run.ctx.world_size,
        roles=roles, final_metrics=final_metrics, data_report=data_report.as_dict(),
        extra={"reference_mode": ref.mode,
               "desirable_examples": sum(e.label for e in examples),
               "undesirable_examples": sum(not e.label for e in examples)},
    )
    distributed.teardown(run.ctx)
    return summary


METHOD = Method(
    name="kto", road="direct",
    summary="KTO: good/bad labels instead of pairs, or pairs split into both",
    config=KTOConfig, roles=("policy", "reference"), trains=("policy",), prior_seconds=75,
    compared=(Compared(
        "kto", "KTO", "KTO: each pair split into a desirable (chosen) and an undesirable "
        "(rejected) example, a frozen copy as reference", "KTO, reference copy",
        world={"learning_rate": 3e-4, "beta": 1.0, "batch_size": 32, "max_steps": 300,
               "warmup_ratio": 0.1, "eval_every": 50},
        user={"eval_every": 100}),),
)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(KTOConfig, argv, prog="preflab kto", description=__doc__)
    session.run_command(train, cfg)
    return 0
