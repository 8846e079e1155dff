"""Direct preference optimisation and its family: preference pairs straight into the policy.

    preflab dpo --model SFT_MODEL --data PAIRS --output-dir RUN [--loss sigmoid|cdpo|ipo|...]

Each step: chosen and rejected go through the policy in ONE concatenated forward; the
reference's log-probs come from wherever ``preflab.training.reference`` holds it (a frozen copy,
the LoRA base with adapters off, a precomputed cache, or nowhere for SimPO/ORPO); the loss
comes from the registry in ``preflab.losses``, which also says whether log-probs are summed
or averaged over tokens and whether an SFT term is added. With gradient accumulation the
per-example losses are summed and divided by the global batch size, so any split of a
batch into micro-batches gives the same update.

Implicit rewards (logged as ``rewards/*``) are beta * (log pi - log pi_ref) for the
reference-based losses and beta * log pi for the reference-free ones (length-averaged for
SimPO and ORPO, summed for CPO).

The loop is ``preflab.training.steps``; its direct-road side, shared with online-dpo, is
``preflab.training.direct.DirectSteps``; this file sets it up (``setup``).
"""

from __future__ import annotations

from dataclasses import dataclass

from preflab.algorithms import Compared, Method
from preflab.config import parse_config
from preflab.data import (
    TruncationPolicy,
    collate_preference,
    load_preference_dataset,
    split_train_eval,
)
from preflab.losses import get_direct_loss
from preflab.training import reference, session, steps
from preflab.training.direct import DirectConfig, DirectSteps, to_device


@dataclass
class DPOConfig(DirectConfig):
    """``preflab dpo``: the shared training flags plus the direct-preference ones."""


def build_reference(cfg: DPOConfig, spec, run, model, tokenizer, train_examples, eval_examples):
    """Hold pi_ref the way the flags ask; for --precompute-ref, compute and free it here."""
    mode = reference.choose_mode(
        needs_reference=spec.needs_reference, precompute=cfg.precompute_ref,
        lora=cfg.lora_rank > 0, separate_ref=bool(cfg.ref_model),
    )
    live = reference.live(cfg, run, model, needed=mode != "none")
    if mode != "precomputed":
        return live
    splits = {k: getattr(cfg, k) for k in ("data_split", "data_config", "eval_data_split")
              if getattr(cfg, k)}  # only when set: the keys of earlier runs stay as they were
    key = reference.cache_key(ref=cfg.ref_model or cfg.model, data=cfg.data, eval_data=cfg.eval_data,
                              eval_fraction=cfg.eval_fraction, seed=cfg.seed,
                              max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                              **splits)
    cache = {}
    for split, examples in (("train", train_examples), ("eval", eval_examples)):
        cache[split] = reference.precompute(
            live.forward,
            examples,
            lambda chunk: to_device(collate_preference(chunk, tokenizer.pad_token_id), run.device),
            batch_size=cfg.eval_batch_size or cfg.batch_size,
            cache_file=run.dir / "ref_logps" / f"{split}-{key}.pt",
            progress=cfg.progress and run.ctx.is_main,
        )
    ref_model = live.model
    del live
    reference.free(ref_model)
    return reference.Reference("precomputed", cache=cache)


def setup(cfg: DPOConfig, run: session.Run, tokenizer) -> DirectSteps:
    """DPO's side of the step loop: the pairs, the policy, and the reference as the flags ask."""
    spec = get_direct_loss(cfg.loss)
    policy = TruncationPolicy(cfg.max_length, cfg.max_prompt_length or None, cfg.overlong)
    examples, data_report = load_preference_dataset(cfg.data, tokenizer, policy,
                                                    **cfg.data_source())
    eval_data, eval_source = cfg.eval_source()
    if eval_data:
        eval_examples, _ = load_preference_dataset(eval_data, tokenizer, policy, **eval_source)
    else:
        examples, eval_examples = split_train_eval(examples, cfg.eval_fraction, cfg.seed)
    prompts, gold_fn = session.sampled_evaluation(cfg, run, tokenizer, policy)
    if run.ctx.is_main:
        print(f"data: {len(examples)} train / {len(eval_examples)} eval pairs; "
              f"{data_report.summary()}", flush=True)

    model = session.load_trainable(cfg, run)
    if cfg.padding_free:
        session.require_packing(model, tokenizer)
    model.train()
    session.claim_run_dir(run)  # --overwrite: the old run goes before the reference cache is made
    ref = build_reference(cfg, spec, run, model, tokenizer, examples, eval_examples)
    session.shard_if_asked(cfg, run, model)  # after the reference copy: that stays whole
    if run.ctx.is_main:
        print(f"loss: {spec.name} ({spec.description}); reference: {ref.mode}", flush=True)
    return DirectSteps(
        cfg=cfg, run=run, spec=spec, model=model, reference=ref, tokenizer=tokenizer,
        examples=examples, eval_examples=eval_examples, prompts=prompts, gold_fn=gold_fn,
        data_report=data_report, desc=f"dpo ({spec.name})",
        postfix=("loss", "rewards/accuracies", "eval/gold_reward"),
        headline=("eval/rewards/accuracies", "eval/gold_reward", "eval/kl"),
        extra={"loss": spec.name, "reference_mode": ref.mode},
    )


@session.trainer
def train(cfg: DPOConfig) -> dict:
    return steps.train(cfg, setup, command="dpo", data="preference")


_WORLD = {"learning_rate": 5e-4, "beta": 0.5, "batch_size": 32, "max_steps": 300,
          "warmup_ratio": 0.1, "eval_every": 50}
METHOD = Method(
    name="dpo", road="direct",
    summary="direct preference optimisation: DPO, cDPO, IPO, hinge, robust, SimPO, CPO, ORPO",
    config=DPOConfig, roles=("policy", "reference"), trains=("policy",), prior_seconds=65,
    memory=("dpo-copy", "dpo-adapter-off", "dpo-precomputed", "simpo-orpo"),
    compared=(
        Compared("dpo", "DPO", "DPO (sigmoid loss), a frozen copy of the SFT model as reference",
                 "DPO, reference copy", flags={"loss": "sigmoid"}, world=_WORLD,
                 user={"eval_every": 100},
                 real_cpu={"learning_rate": 5e-6, "beta": 0.1, "batch_size": 4, "grad_accum": 2,
                           "max_steps": 40, "warmup_ratio": 0.1, "eval_every": 0}),
        Compared("ipo", "IPO", "IPO: squared loss toward a margin of 1/(2 beta) on "
                 "token-averaged log-probs", "IPO, reference copy", flags={"loss": "ipo"},
                 world=_WORLD, user={"eval_every": 100}),
        Compared("simpo", "SimPO", "SimPO: length-normalised, no reference model",
                 "reference-free (SimPO)", flags={"loss": "simpo"}, plan="simpo-orpo",
                 world={"learning_rate": 1e-4, "beta": 2.0, "gamma": 0.5, "batch_size": 32,
                        "max_steps": 300, "warmup_ratio": 0.1, "eval_every": 50},
                 user={"beta": 2.0, "gamma": 0.5, "eval_every": 100}),
        Compared("cpo", "CPO", "CPO: reference-free DPO on summed log-probs, plus alpha times "
                 "the chosen completion's NLL", "reference-free (CPO)", flags={"loss": "cpo"},
                 # 6 settings on the world, seed 0: alpha 0.1 drifted (KL 3.8) and lost gold
                 plan="simpo-orpo", world={**_WORLD, "beta": 0.1},
                 user={"eval_every": 100}),
        Compared("dpo-precomputed", "DPO (precomputed ref)", "DPO with the reference's log-probs "
                 "computed once before training and the reference freed",
                 "DPO, precomputed reference", flags={"loss": "sigmoid", "precompute_ref": True},
                 plan="dpo-precomputed",
                 section="dpo"),
    ),
)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DPOConfig, argv, prog="preflab dpo", description=__doc__)
    session.run_command(train, cfg)
    return 0
